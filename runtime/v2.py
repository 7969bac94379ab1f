"""The Open Inference Protocol (KServe v2 REST) over one model: an infer request read
against the manifest (JSON tensors, or Triton's binary tensor data extension, which NVIDIA's
tritonclient sends by default), the answer built, and the metadata documents. Protocol only:
runtime/server.py routes the paths and maps failures (BadInput) to statuses.
"""
from __future__ import annotations

import math

from .arrays import WEIGHT_SIZES, all_finite, as_tensor, dtype_kind, flat, shaped
from .errors import BadInput
from .events import dumps, loads

# Open Inference Protocol datatypes of our manifest dtypes.
V2_DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "int16": "INT16",
                "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
# A bundle is one version of one model: the Open Inference Protocol's version "1" (what
# Triton numbers a model repository's first version), listed in the model's metadata.
MODEL_VERSION = "1"
# Triton's binary tensor data extension: the request's (and response's) JSON is the body's
# first this-many bytes, the tensors' raw little-endian bytes follow in input order.
BINARY_HEADER = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"  # the WSGI name of Inference-Header-Content-Length
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON = "application/json"


def split_body(body: bytes, header: str | None) -> tuple:
    """(the request's JSON, the binary part of the body or None): with an
    Inference-Header-Content-Length header the JSON is the body's first that-many bytes."""
    if header is None:
        return loads(body), None
    if not header.strip().isdigit() or not 0 < int(header) <= len(body):
        raise BadInput(f"Inference-Header-Content-Length {header[:32]!r} is not a byte count within the "
                       f"{len(body)}-byte body")
    split = int(header)
    return loads(body[:split]), memoryview(body)[split:]


def encode(answer: dict, blobs: list) -> tuple[bytes, str, list]:
    """(body, content type, headers) of an infer answer; binary outputs follow its JSON."""
    header = dumps(answer).encode()
    if not blobs:
        return header, JSON, []
    return (header + b"".join(blobs), BINARY_CONTENT_TYPE,
            [("Inference-Header-Content-Length", str(len(header)))])


def _tensor(t) -> dict:
    return {"name": t.name, "datatype": V2_DATATYPES[t.dtype], "shape": [-1 if isinstance(d, str) else d for d in t.shape]}


def model_metadata(manifest, name: str) -> dict:
    return {"name": name, "versions": [MODEL_VERSION], "platform": f"edgebundle_tvm_{manifest.target.name}",
            "inputs": [_tensor(t) for t in manifest.inputs], "outputs": [_tensor(t) for t in manifest.outputs]}


def server_metadata(manifest) -> dict:
    return {"name": "edgebundle", "version": manifest.versions.edgebundle, "extensions": ["binary_tensor_data"]}


def decode(model, manifest, model_name: str, request, binary: memoryview | None = None):
    """An Open Inference Protocol request (`binary`: the bytes after its JSON, Triton's
    binary tensor data extension) -> tensor-mode items and its answer builder, which
    returns (the JSON answer, the binary outputs' bytes in its order)."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise BadInput('the request must be an object with "inputs": [{"name", "shape", "datatype", "data"}]')
    specs = {t.name: t for t in manifest.inputs}
    tensors = {}
    offset = 0  # into binary: each binary input takes the next binary_data_size bytes
    for n, entry in enumerate(request["inputs"]):
        name, tensor, offset = _input(model, specs, n, entry, binary, offset, tensors)
        tensors[name] = tensor
    if binary is not None and offset != len(binary):
        raise BadInput(f"the binary part of the body is {len(binary)} bytes; the inputs' binary_data_size "
                       f"add up to {offset}")
    if "id" in request and not isinstance(request["id"], str):
        raise BadInput('"id" must be a string (the Open Inference Protocol\'s request id)')
    wanted, binary_out = _outputs(manifest, request)
    dtypes = {t.name: t.dtype for t in manifest.outputs}
    items = [model.prepare(tensors)]

    def finish(outputs):
        out = model.check_finite(outputs[0])
        entries, blobs = [], []
        for n in wanted:
            entry = {"name": n, "datatype": V2_DATATYPES[dtypes[n]], "shape": list(out[n].shape)}
            if binary_out[n]:
                blobs.append(flat(out[n]).tobytes())
                entry["parameters"] = {"binary_data_size": len(blobs[-1])}
            else:
                entry["data"] = flat(out[n]).tolist()
            entries.append(entry)
        answer = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": entries}
        if "id" in request:
            answer["id"] = request["id"]
        return answer, blobs

    return items, finish


def _input(model, specs: dict, n: int, entry, binary: memoryview | None, offset: int, seen: dict) -> tuple:
    """(name, tensor, the binary offset after it) of the request's input `n`, checked
    against the manifest's spec of that name before any of its data is read."""
    fields = (f'"inputs"[{n}] must have "name", "shape", "datatype" and "data" (or '
              '"parameters": {"binary_data_size": N})')
    if not isinstance(entry, dict) or not {"name", "shape", "datatype"} <= set(entry):
        raise BadInput(fields)
    size = _parameters(entry, f'"inputs"[{n}]').get("binary_data_size")
    name = entry["name"]
    if not isinstance(name, str):
        raise BadInput(f'"inputs"[{n}]: "name" must be a string')
    spec = specs.get(name)
    if spec is None:
        raise BadInput(f'unknown input {name!r}; the model takes {list(specs)}')
    if name in seen:
        raise BadInput(f'input {name!r} is given twice')
    want = V2_DATATYPES[spec.dtype]
    if entry["datatype"] != want:
        raise BadInput(f'input {name!r} has datatype {entry["datatype"]!r}; the model takes {want}')
    shape = entry["shape"]
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise BadInput(f'input {name!r}: "shape" must be a list of positive integers')
    limit = model.max_elements(spec)
    if any(d > limit for d in shape):  # before the product, which could be a huge number
        raise BadInput(f'input {name!r}: a dimension of "shape" exceeds the {limit} values it may hold')
    if len(shape) != len(spec.shape):
        raise BadInput(f'input {name!r} has shape {shape[:8]}{"..." if len(shape) > 8 else ""} '
                       f'({len(shape)} dimensions); the model takes {len(spec.shape)}: {list(spec.shape)}')
    if size is not None:
        return name, *_binary_tensor(name, spec, shape, size, entry, binary, offset)
    if "data" not in entry:
        raise BadInput(fields)
    data = entry["data"]
    if not isinstance(data, list):
        raise BadInput(f'input {name!r}: "data" must be a list')
    view = as_tensor(data, name, spec.dtype, max_ndim=len(spec.shape), max_elements=limit)
    if math.prod(view.shape) != math.prod(shape):
        raise BadInput(f'input {name!r} has {math.prod(view.shape)} values; shape {shape} needs '
                       f'{math.prod(shape)}')
    return name, shaped(view.cast("B"), spec.dtype, shape), offset


def _binary_tensor(name: str, spec, shape: list, size, entry: dict, binary: memoryview | None, offset: int):
    """(tensor, next offset): the input's binary_data_size bytes at `offset`, bounds-checked."""
    if "data" in entry:
        raise BadInput(f'input {name!r} has both "data" and a binary_data_size; send one')
    if binary is None:
        raise BadInput(f'input {name!r} has a binary_data_size but the request has no binary part '
                       '(no Inference-Header-Content-Length header)')
    want_bytes = math.prod(shape) * WEIGHT_SIZES[spec.dtype]
    if not isinstance(size, int) or isinstance(size, bool) or size != want_bytes:
        raise BadInput(f'input {name!r}: binary_data_size {size!r} is not the {want_bytes} bytes '
                       f'{spec.dtype} of shape {shape} take')
    if offset + size > len(binary):
        raise BadInput(f'input {name!r}: its {size} bytes run past the body ({len(binary) - offset} '
                       'binary bytes left)')
    raw = shaped(binary[offset:offset + size], spec.dtype, shape)
    if dtype_kind(spec.dtype) == "f" and not all_finite(raw):
        raise BadInput(f'input {name!r} holds a NaN or an infinity')
    return raw, offset + size


def _outputs(manifest, request: dict) -> tuple[list, dict]:
    """(the output names to answer, in order; {name: as binary?}) from "outputs" and the
    binary_data / binary_data_output parameters."""
    wanted = [t.name for t in manifest.outputs]
    as_binary = _parameters(request, "the request").get("binary_data_output", False)
    if not isinstance(as_binary, bool):
        raise BadInput('"parameters": "binary_data_output" must be true or false')
    binary_out = dict.fromkeys(wanted, as_binary)
    if request.get("outputs") is None:
        return wanted, binary_out
    asked = request["outputs"]
    if not isinstance(asked, list) or not all(isinstance(o, dict) and "name" in o for o in asked):
        raise BadInput('"outputs" must be a list of {"name": ...}')
    unknown = [o["name"] for o in asked if o["name"] not in wanted]
    if unknown:
        raise BadInput(f'unknown outputs {unknown}; the model has {wanted}')
    for o in asked:
        flag = _parameters(o, f'output {o["name"]!r}').get("binary_data", as_binary)
        if not isinstance(flag, bool):
            raise BadInput(f'output {o["name"]!r}: "binary_data" must be true or false')
        binary_out[o["name"]] = flag
    return [o["name"] for o in asked], binary_out


def _parameters(entry: dict, where: str) -> dict:
    params = entry.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadInput(f'{where}: "parameters" must be an object')
    return params
