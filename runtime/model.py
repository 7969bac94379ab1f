"""A compiled model as its manifest describes it: tensor mode (`run`) and task mode
(`predict`)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from . import manifest
from ._tvm import CompiledModule, Weights, cuda_compute_capability, load_tvm_runtime
from .arrays import as_tensor, flat, pack, shaped
from .errors import BadInput, DeviceUnavailable
from .manifest import Tensor


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    total = sum(e)
    return [v / total for v in e]


def _sigmoid(row: list[float]) -> list[float]:
    # Split by sign so that exp never overflows for large |v|.
    return [1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)) for v in row]


def _pad_seq(view: memoryview, spec: Tensor, length: int) -> memoryview:
    """`view` with its "seq" axis filled up to `length` with the input's pad value."""
    axis = spec.seq_axis
    if axis is None:
        return view
    have = view.shape[axis]
    if have == length:
        return view
    outer, inner = math.prod(view.shape[:axis]), math.prod(view.shape[axis + 1:])
    values, fill = flat(view).tolist(), [spec.pad] * ((length - have) * inner)
    padded = []
    for o in range(outer):
        padded += values[o * have * inner:(o + 1) * have * inner]
        padded += fill
    shape = list(view.shape)
    shape[axis] = length
    return shaped(pack(padded, spec.dtype), spec.dtype, shape)


def check_cuda(model_dir: Path, m: manifest.Manifest) -> None:
    """Before any GPU call: device code compiled ahead of time, and a GPU it can serve."""
    code = m.device_code
    if code is None or code.format != "fatbin":
        raise manifest.ManifestError(
            f"{model_dir / manifest.FILENAME}: the GPU code of this model was not compiled ahead of time "
            f"(device code {code.format if code else 'missing'}, written by edgebundle {m.versions.edgebundle}); "
            "loading it would need the TVM compiler, which bundles do not carry. Rebuild it with this edgebundle "
            "(edgebundle build ... --target cuda).")
    load_tvm_runtime(model_dir, "cuda")
    capability = cuda_compute_capability(0)
    if not code.serves(capability):
        have = (f"SASS for {', '.join(code.sass)}" if code.sass else "no SASS") + (
            f" and PTX for {code.ptx} (which needs compute capability "
            f"{int(code.ptx.split('_')[1]) // 10}.{int(code.ptx.split('_')[1]) % 10} or newer)" if code.ptx else "")
        raise DeviceUnavailable(
            f"cuda: this GPU has compute capability {capability} (sm_{capability.replace('.', '')}); the model's "
            f"device code has {have}: none of it runs here. Rebuild for this GPU with --cuda-arch, or run on a "
            "GPU the model was built for")


class Model:
    def __init__(self, model_dir: str | Path, device: str | None = None):
        self.dir = Path(model_dir)
        self.manifest = m = manifest.read(self.dir)
        self.inputs: tuple[Tensor, ...] = m.inputs
        self.outputs: tuple[Tensor, ...] = m.outputs
        self.task: str = m.model.task
        self.labels: tuple[str, ...] | None = m.labels
        self.max_batch: int = m.max_batch
        device = device or m.target.device
        if device == "cuda":
            check_cuda(self.dir, m)
        self.weights = (Weights(self.dir / m.weights.file, device, expect_count=m.weights.count)
                        if m.weights else None)
        weights = self.weights.tensors if self.weights else []
        for lib in m.libraries:
            if any(not 0 <= i < len(weights) for i in lib.weights):
                raise manifest.ManifestError(f"{self.dir / manifest.FILENAME}: {lib.file} names weights "
                                             "model.weights lacks")
        # {compiled sequence length (None: no such dimension): module}, shortest first; each
        # holds its weight tensors, which keep the mapping alive.
        self.modules = {lib.seq: CompiledModule(self.dir / lib.file, device, weights=[weights[i] for i in lib.weights])
                        for lib in m.libraries}
        self.seq_lengths = m.seq_lengths
        pre = m.preprocessing
        if pre.kind == "text":
            from .text import TextEncoder

            self.encoder = TextEncoder(self.dir, pre, self.inputs)
        elif pre.kind == "image":
            from .image import ImageEncoder

            self.encoder = ImageEncoder(pre)
        else:
            self.encoder = None

    # -- tensor mode -------------------------------------------------------------------
    def check_tensors(self, tensors) -> list[memoryview]:
        """Request tensors (nested lists or buffers such as numpy arrays) -> validated,
        C-contiguous views in the manifest's dtypes and order."""
        if not isinstance(tensors, dict):
            raise BadInput('"tensors" must be an object mapping input names to arrays')
        names = [i.name for i in self.inputs]
        unknown = sorted(set(tensors) - set(names))
        missing = [n for n in names if n not in tensors]
        if unknown or missing:
            raise BadInput(f"tensor inputs must be exactly {names}"
                           + (f"; missing {missing}" if missing else "")
                           + (f"; unknown {unknown}" if unknown else ""))
        views, symbols = [], {}
        for spec in self.inputs:
            name = spec.name
            view = as_tensor(tensors[name], name, spec.dtype)
            shape, got = list(spec.shape), list(view.shape)
            if len(got) != len(shape):
                raise BadInput(f'"{name}" has shape {got}, expected {shape}')
            for dim, want in zip(got, shape):
                if isinstance(want, str):
                    if symbols.setdefault(want, dim) != dim:
                        raise BadInput(f'"{name}" has {want}={dim}, other inputs have {symbols[want]}')
                    if want == "batch" and not 1 <= dim <= self.max_batch:
                        raise BadInput(f'"{name}" has batch {dim}; 1..{self.max_batch} accepted')
                    if want == "seq" and not 1 <= dim <= self.seq_lengths[-1]:
                        raise BadInput(f'"{name}" has length {dim}; 1..{self.seq_lengths[-1]} accepted')
                elif dim != want:
                    raise BadInput(f'"{name}" has shape {got}, expected {shape}')
            rng = spec.range
            # Out-of-range indices would read outside an embedding table in compiled code.
            if rng is not None and view.nbytes:
                values = flat(view)
                if min(values) < rng[0] or max(values) >= rng[1]:
                    raise BadInput(f'"{name}" values must be in [{rng[0]}, {rng[1]})')
            views.append(view)
        return views

    def run(self, tensors: dict) -> dict[str, memoryview]:
        """Tensor mode. Outputs are shaped memoryviews: `.tolist()` for JSON, and
        `numpy.asarray(view)` wraps one without a copy where numpy is installed."""
        views = self.check_tensors(tensors)
        module = self.modules.get(None)
        if module is None:  # the shortest compiled length that fits, inputs padded to it
            length = next(v.shape[s.seq_axis] for v, s in zip(views, self.inputs) if s.seq_axis is not None)
            seq = next(n for n in self.seq_lengths if n >= length)
            module = self.modules[seq]
            views = [_pad_seq(v, s, seq) for v, s in zip(views, self.inputs)]
        results = module(views, [spec.dtype for spec in self.inputs])
        return {spec.name: out for spec, out in zip(self.outputs, results)}

    # -- task mode ---------------------------------------------------------------------
    def predict(self, inputs, parameters: dict | None = None):
        if self.encoder is None:
            raise BadInput("this model takes tensors only: send {\"tensors\": {...}}")
        parameters = parameters or {}
        if not isinstance(parameters, dict):
            raise BadInput('"parameters" must be an object')
        single = isinstance(inputs, str)
        items = self.encoder.check(inputs)
        answers = []
        for start in range(0, len(items), self.max_batch):
            tensors = self.encoder(items[start:start + self.max_batch])
            out = self.run(tensors)
            answers.extend(self._postprocess(out, parameters))
        return answers[0] if single else answers

    def _postprocess(self, out: dict, parameters: dict) -> list:
        post = self.manifest.postprocessing
        values = out[post.output]
        if post.kind == "embedding":
            return values.tolist()
        if post.kind == "classification":
            top_k = parameters.get("top_k", post.top_k)
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.labels):
                raise BadInput(f'"parameters.top_k" must be an integer in 1..{len(self.labels)}')
            score = _sigmoid if post.function == "sigmoid" else _softmax
            result = []
            for row in values.tolist():
                row = score(row)
                order = sorted(range(len(row)), key=lambda i: -row[i])[:top_k]  # stable: ties keep label order
                result.append([{"label": self.labels[i], "score": row[i]} for i in order])
            return result
        raise ValueError(f"unknown postprocessing {post.kind!r}")

    def info(self) -> dict:
        m = self.manifest
        return {"model": dataclasses.asdict(m.model), "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs],
                "labels": list(self.labels) if self.labels is not None else None,
                "target": m.target.name, "versions": dataclasses.asdict(m.versions)}
