"""The model server's application: SageMaker's inference contract, the Open Inference
Protocol (KServe v2 REST) and Prometheus metrics over one loaded model, as a WSGI app.

Standard library only: the HTTP layer (waitress, vendored into images and edge installs)
is attached in runtime/serve.py. Requests are decoded on the server's threads, run through
one Batcher, and answered with JSON; every failure is a status with {"error": ...}.
"""
from __future__ import annotations

import hmac
import json
import math
import os
import re
import sys
import threading
import time
import traceback
import uuid

from .arrays import WEIGHT_SIZES, all_finite, as_tensor, dtype_kind, flat, shaped
from .batching import Batcher, Closed, QueueFull, TooLarge
from .errors import BadInput
from .events import decode, dumps, loads
from .limits import MAX_INPUTS
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics

# Open Inference Protocol datatypes of our manifest dtypes.
V2_DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "int16": "INT16",
                "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
_JSON = "application/json"
_STATUS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
           504: "Gateway Timeout"}
# What probes (systemd, Kubernetes, load balancers, SageMaker) call without credentials;
# with a token every other path, the model's own ready path included, is authorized first.
_OPEN_PATHS = ("/ping", "/v2/health/live", "/v2/health/ready")
_V2_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?$")
# A bundle is one version of one model: the Open Inference Protocol's version "1" (what
# Triton numbers a model repository's first version), listed in the model's metadata.
MODEL_VERSION = "1"
# Triton's binary tensor data extension: the request's (and response's) JSON is the body's
# first this-many bytes, the tensors' raw little-endian bytes follow in input order.
_BINARY_HEADER = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"
_BINARY_CONTENT_TYPE = "application/octet-stream"


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: tuple = ()):
        super().__init__(message)
        self.status, self.headers = status, list(headers)


class Options:
    """Serving knobs (runtime/serve.py parses them from the command line)."""

    def __init__(self, max_batch: int | None = None, batch_window_ms: float = 2.0, max_queue: int = 64,
                 timeout_s: float = 30.0, warm: bool = True, token: str | None = None,
                 max_inputs: int = MAX_INPUTS):
        self.max_batch, self.batch_window_ms, self.max_queue = max_batch, batch_window_ms, max_queue
        self.max_inputs = max_inputs
        self.timeout_s, self.warm = timeout_s, warm
        # A bearer token every request must carry, except the health probes (systemd,
        # Kubernetes and load balancers probe without credentials).
        self.token = token


class App:
    """A WSGI application serving the model in `model_dir` under `name`. Live from the
    start; ready once load() has loaded and warmed the model."""

    def __init__(self, model_dir, name: str | None = None, options: Options | None = None, log=None):
        from . import manifest

        self.model_dir = model_dir
        self.manifest = manifest.read(model_dir)
        self.name = name or default_name(self.manifest.model.name)
        self.options = options or Options()
        self.max_batch = min(self.options.max_batch or self.manifest.max_batch, self.manifest.max_batch)
        self.metrics = Metrics(self.name, self.max_batch)
        self.model = None
        self.batcher = None
        self.load_error = None
        self.draining = False
        self._decoding = 0
        self._lock = threading.Lock()
        self._log = log or sys.stdout
        # {path: (endpoint label, {method: handler})}; the model's v2 paths are literal: one name.
        model = f"/v2/models/{self.name}"
        versioned = f"{model}/versions/{MODEL_VERSION}"
        self._routes = {"/ping": ("ping", {"GET": self._ping}),
                        "/invocations": ("invocations", {"POST": self._invocations}),
                        "/metrics": ("metrics", {"GET": self._metrics}),
                        "/v2/health/live": ("health", {"GET": self._live}),
                        "/v2/health/ready": ("health", {"GET": self._ready}),
                        "/v2": ("v2_server", {"GET": self._server_metadata}),
                        "/": ("info", {"GET": self._info}),
                        model: ("v2_metadata", {"GET": self._model_metadata}),
                        f"{model}/ready": ("health", {"GET": self._ready}),
                        f"{model}/infer": ("v2_infer", {"POST": self._infer}),
                        versioned: ("v2_metadata", {"GET": self._model_metadata}),
                        f"{versioned}/ready": ("health", {"GET": self._ready}),
                        f"{versioned}/infer": ("v2_infer", {"POST": self._infer})}
        self._log_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> None:
        """Load and warm the model, then start batching; on failure keep the error (the
        server exits with it)."""
        from .model import Model

        start = time.perf_counter()
        try:
            model = Model(self.model_dir)
            model.max_inputs = self.options.max_inputs
            if self.options.warm:
                model.warm()
        except BaseException as e:  # noqa: BLE001 - reported by the serving loop, which exits
            self.load_error = e
            return
        self.batcher = Batcher(model.execute, model.batch_key, self.max_batch, self.options.batch_window_ms / 1000,
                               self.options.max_queue, decoding=lambda: self._decoding,
                               on_batch=self.metrics.observe_batch)
        self.metrics.queue_depth = lambda: self.batcher.depth
        self.model = model  # last: a model makes the server ready, and requests then need the batcher
        self.metrics.load_seconds = time.perf_counter() - start
        self.metrics.ready = True
        self.event("ready", load_ms=round(self.metrics.load_seconds * 1000, 1), max_batch=self.max_batch,
                   batch_window_ms=self.options.batch_window_ms, max_queue=self.options.max_queue,
                   threads=os.environ.get("TVM_NUM_THREADS"), variant=model.variant.name,
                   variant_reason=model.variant_reason)

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    def busy(self) -> bool:
        return self.metrics.in_flight > 0 or (self.batcher is not None and self.batcher.busy)

    def event(self, what: str, **fields) -> None:
        """One JSON line on the log (stdout)."""
        line = json.dumps({"time": round(time.time(), 3), "event": what, **fields}, separators=(",", ":"))
        with self._log_lock:
            self._log.write(line + "\n")
            self._log.flush()

    # -- WSGI --------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        start = time.perf_counter()
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        request_id = _request_id(environ)
        endpoint, batches = "unknown", None
        with self._lock:
            self.metrics.in_flight += 1
        try:
            # Authorized before routing: a 404 or 405 would otherwise tell anyone the
            # model's name and routes. Only the health probes are open.
            if self.options.token and (path.rstrip("/") or "/") not in _OPEN_PATHS:
                self._authorize(environ)
            endpoint, handler = self._route(method, path)
            status, body, content_type, headers, batches = handler(environ)
        except HTTPError as e:
            status, body, content_type, headers = e.status, _json({"error": str(e)}), _JSON, e.headers
        except Exception:  # a bug: the client gets a 500 without internals, the log the traceback
            traceback.print_exc(file=sys.stderr)
            status, body, content_type, headers = (500, _json({"error": "internal error; see the server's log"}),
                                                   _JSON, [])
        finally:
            with self._lock:
                self.metrics.in_flight -= 1
        # No "Connection: close" while draining: a hop-by-hop header, which WSGI servers refuse
        # (waitress turned every answer into a 500): serve.py closes them after each answer.
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("X-Request-Id", request_id), *headers]
        start_response(f"{status} {_STATUS.get(status, 'Error')}", headers)
        seconds = time.perf_counter() - start
        self.metrics.observe_request(endpoint, status, seconds)
        if endpoint not in ("metrics", "ping", "health"):
            self.log_request(request_id, method, path, status, seconds, batches)
        return [body]

    def _authorize(self, environ) -> None:
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  self.options.token.encode()):
            raise HTTPError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                            [("WWW-Authenticate", 'Bearer realm="edgebundle"')])

    def log_request(self, request_id, method, path, status, seconds, batches=None) -> None:
        fields = {"id": request_id, "method": method, "path": path, "status": status,
                  "latency_ms": round(seconds * 1000, 3)}
        if batches:
            fields["batch"] = max(batches)
        self.event("request", **fields)

    def _route(self, method: str, path: str):
        found = self._routes.get(path.rstrip("/") or "/")
        if found is None:
            m = _V2_MODEL.match(path.rstrip("/"))
            if m is not None and m.group(1) != self.name:
                raise HTTPError(404, f"unknown model {m.group(1)!r}; this server serves {self.name!r}")
            if m is not None and m.group(2) is not None:
                raise HTTPError(404, f"model {self.name!r} has no version {m.group(2)!r}; its versions are "
                                     f"[{MODEL_VERSION!r}]")
            raise HTTPError(404, f"no such path {path}; the server answers /ping, /invocations, /metrics, "
                                 f"/v2/health/live, /v2/health/ready, /v2/models/{self.name}[/versions/{MODEL_VERSION}][/ready|/infer]")
        endpoint, methods = found
        if method not in methods:
            raise HTTPError(405, f"{method} is not allowed on {path}; use {', '.join(methods)}",
                            headers=[("Allow", ", ".join(methods))])
        return endpoint, methods[method]

    # -- health and metadata -----------------------------------------------------------
    def _not_ready(self) -> HTTPError:
        if self.draining:
            return HTTPError(503, "the server is shutting down", headers=[("Retry-After", "1")])
        # The open probes answer this without a token: the name only where no token guards it.
        what = "the model" if self.options.token else f"the model {self.name}"
        return HTTPError(503, f"{what} is loading", headers=[("Retry-After", "1")])

    def _ping(self, environ):
        if not self.ready:
            raise self._not_ready()
        ping = {"status": "ready"} if self.options.token else {"status": "ready", "model": self.name}
        return 200, _json(ping), _JSON, [], None

    def _live(self, environ):
        return 200, _json({"live": True}), _JSON, [], None

    def _ready(self, environ):
        if not self.ready:
            raise self._not_ready()
        return 200, _json({"ready": True}), _JSON, [], None

    def _metrics(self, environ):
        return 200, self.metrics.render().encode(), METRICS_CONTENT_TYPE, [], None

    def _server_metadata(self, environ):
        return 200, _json({"name": "edgebundle", "version": self.manifest.versions.edgebundle,
                           "extensions": ["binary_tensor_data"]}), _JSON, [], None

    def _info(self, environ):
        m = self.manifest
        return 200, _json({"model": self.name, "task": m.model.task, "target": m.target.name,
                           "ready": self.ready, "max_batch": self.max_batch,
                           "endpoints": ["/ping", "/invocations", "/metrics", "/v2/health/live", "/v2/health/ready",
                                         f"/v2/models/{self.name}", f"/v2/models/{self.name}/infer"]}), _JSON, [], None

    def _model_metadata(self, environ):
        def tensor(t):
            return {"name": t.name, "datatype": V2_DATATYPES[t.dtype],
                    "shape": [-1 if isinstance(d, str) else d for d in t.shape]}

        m = self.manifest
        return 200, _json({"name": self.name, "versions": [MODEL_VERSION], "platform": f"edgebundle_tvm_{m.target.name}",
                           "inputs": [tensor(t) for t in m.inputs],
                           "outputs": [tensor(t) for t in m.outputs]}), _JSON, [], None

    # -- inference ---------------------------------------------------------------------
    def _run(self, decode_items):
        """decode_items() -> (items, finish) on this thread, then the items through the
        batcher; the answer, and the sizes of the batches it ran in. While draining, what
        was received is still answered: only the health paths turn 503."""
        if self.model is None:
            raise self._not_ready()
        with self._lock:
            self._decoding += 1
        queued = False

        def on_queued():
            nonlocal queued
            queued = True
            # Under the batcher's lock too: its worker sees the request queued and no longer
            # decoding at once. (Lock order: batcher, then app; never the reverse.)
            with self._lock:
                self._decoding -= 1

        try:
            items, finish = decode_items()
            outputs, batches = self.batcher.submit(items, self.options.timeout_s, on_queued=on_queued)
            return finish(outputs), batches
        except BadInput as e:
            raise HTTPError(400, str(e)) from None
        except TooLarge as e:
            raise HTTPError(413, str(e)) from None
        except QueueFull:
            raise HTTPError(503, f"the queue is full ({self.options.max_queue} rows waiting); retry shortly",
                            headers=[("Retry-After", "1")]) from None
        except Closed:
            raise HTTPError(503, "the server is shutting down", headers=[("Retry-After", "1")]) from None
        except TimeoutError:
            raise HTTPError(504, f"no answer within {self.options.timeout_s:g} s (the model is overloaded); "
                                 "retry later or with fewer inputs") from None
        finally:
            if not queued:
                with self._lock:
                    self._decoding -= 1
                self.batcher.notify()

    def _invocations(self, environ):
        request = _read_json(environ)
        answer, batches = self._run(lambda: decode(self.model, request))
        return 200, _json(answer), _JSON, [], batches

    def _infer(self, environ):
        request, binary = _read_v2(environ)
        (answer, blobs), batches = self._run(lambda: self._decode_v2(request, binary))
        header = _json(answer)
        if not blobs:
            return 200, header, _JSON, [], batches
        return (200, header + b"".join(blobs), _BINARY_CONTENT_TYPE,
                [("Inference-Header-Content-Length", str(len(header)))], batches)

    def _decode_v2(self, request, binary: memoryview | None = None):
        """An Open Inference Protocol request (`binary`: the bytes after its JSON, Triton's
        binary tensor data extension) -> tensor-mode items and its answer builder, which
        returns (the JSON answer, the binary outputs' bytes in its order)."""
        if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
            raise BadInput('the request must be an object with "inputs": [{"name", "shape", "datatype", "data"}]')
        specs = {t.name: t for t in self.manifest.inputs}
        tensors = {}
        offset = 0  # into binary: each binary input takes the next binary_data_size bytes
        for n, entry in enumerate(request["inputs"]):
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
            if name in tensors:
                raise BadInput(f'input {name!r} is given twice')
            want = V2_DATATYPES[spec.dtype]
            if entry["datatype"] != want:
                raise BadInput(f'input {name!r} has datatype {entry["datatype"]!r}; the model takes {want}')
            shape = entry["shape"]
            if (not isinstance(shape, list) or not shape
                    or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
                raise BadInput(f'input {name!r}: "shape" must be a list of positive integers')
            limit = self.model.max_elements(spec)
            if any(d > limit for d in shape):  # before the product, which could be a huge number
                raise BadInput(f'input {name!r}: a dimension of "shape" exceeds the {limit} values it may hold')
            if len(shape) != len(spec.shape):
                raise BadInput(f'input {name!r} has shape {shape[:8]}{"..." if len(shape) > 8 else ""} '
                               f'({len(shape)} dimensions); the model takes {len(spec.shape)}: {list(spec.shape)}')
            if size is not None:
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
                offset += size
                if dtype_kind(spec.dtype) == "f" and not all_finite(raw):
                    raise BadInput(f'input {name!r} holds a NaN or an infinity')
                tensors[name] = raw
                continue
            if "data" not in entry:
                raise BadInput(fields)
            data = entry["data"]
            if not isinstance(data, list):
                raise BadInput(f'input {name!r}: "data" must be a list')
            view = as_tensor(data, name, spec.dtype, max_ndim=len(spec.shape), max_elements=limit)
            if math.prod(view.shape) != math.prod(shape):
                raise BadInput(f'input {name!r} has {math.prod(view.shape)} values; shape {shape} needs '
                               f'{math.prod(shape)}')
            tensors[name] = shaped(view.cast("B"), spec.dtype, shape)
        if binary is not None and offset != len(binary):
            raise BadInput(f"the binary part of the body is {len(binary)} bytes; the inputs' binary_data_size "
                           f"add up to {offset}")
        if "id" in request and not isinstance(request["id"], str):
            raise BadInput('"id" must be a string (the Open Inference Protocol\'s request id)')
        wanted = [t.name for t in self.manifest.outputs]
        as_binary = _parameters(request, "the request").get("binary_data_output", False)
        if not isinstance(as_binary, bool):
            raise BadInput('"parameters": "binary_data_output" must be true or false')
        binary_out = dict.fromkeys(wanted, as_binary)
        if request.get("outputs") is not None:
            asked = request["outputs"]
            if not isinstance(asked, list) or not all(isinstance(o, dict) and "name" in o for o in asked):
                raise BadInput('"outputs" must be a list of {"name": ...}')
            unknown = [o["name"] for o in asked if o["name"] not in wanted]
            if unknown:
                raise BadInput(f'unknown outputs {unknown}; the model has {wanted}')
            wanted = [o["name"] for o in asked]
            for o in asked:
                flag = _parameters(o, f'output {o["name"]!r}').get("binary_data", as_binary)
                if not isinstance(flag, bool):
                    raise BadInput(f'output {o["name"]!r}: "binary_data" must be true or false')
                binary_out[o["name"]] = flag
        dtypes = {t.name: t.dtype for t in self.manifest.outputs}
        items = [self.model.prepare(tensors)]

        def finish(outputs):
            out = self.model.check_finite(outputs[0])
            entries, blobs = [], []
            for n in wanted:
                entry = {"name": n, "datatype": V2_DATATYPES[dtypes[n]], "shape": list(out[n].shape)}
                if binary_out[n]:
                    blobs.append(flat(out[n]).tobytes())
                    entry["parameters"] = {"binary_data_size": len(blobs[-1])}
                else:
                    entry["data"] = flat(out[n]).tolist()
                entries.append(entry)
            answer = {"model_name": self.name, "model_version": MODEL_VERSION, "outputs": entries}
            if "id" in request:
                answer["id"] = request["id"]
            return answer, blobs

        return items, finish


def default_name(model_name: str) -> str:
    """The name a model is served under: the manifest's, without a hub id's owner."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", model_name.rstrip("/").rsplit("/", 1)[-1]) or "model"


def _request_id(environ) -> str:
    given = environ.get("HTTP_X_REQUEST_ID") or environ.get("HTTP_X_AMZN_REQUESTID")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


def _read_body(environ) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError(400, "invalid Content-Length") from None
    if length <= 0:
        raise HTTPError(400, "the request body is empty; send a JSON object")
    return environ["wsgi.input"].read(length)


def _read_json(environ):
    try:
        return loads(_read_body(environ))
    except BadInput as e:
        raise HTTPError(400, str(e)) from None


def _read_v2(environ) -> tuple:
    """(the request's JSON, the binary part of its body or None): with an
    Inference-Header-Content-Length header the JSON is the body's first that-many bytes."""
    raw = environ.get(_BINARY_HEADER)
    if raw is None:
        return _read_json(environ), None
    body = _read_body(environ)
    if not raw.strip().isdigit() or not 0 < int(raw) <= len(body):
        raise HTTPError(400, f"Inference-Header-Content-Length {raw[:32]!r} is not a byte count within the "
                             f"{len(body)}-byte body")
    split = int(raw)
    try:
        return loads(body[:split]), memoryview(body)[split:]
    except BadInput as e:
        raise HTTPError(400, str(e)) from None


def _parameters(entry: dict, where: str) -> dict:
    params = entry.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadInput(f'{where}: "parameters" must be an object')
    return params


def _json(value) -> bytes:
    return dumps(value).encode()
