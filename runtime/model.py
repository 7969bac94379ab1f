"""A compiled model as its manifest describes it: tensor mode (`run`) and task mode
(`predict`)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from . import cpu, manifest
from ._tvm import CompiledModule, Weights, cuda_compute_capability, load_tvm_runtime
from .arrays import all_finite, as_tensor, flat, pack, shaped
from .errors import BadInput, DeviceUnavailable
from .limits import MAX_INPUTS
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


@dataclasses.dataclass
class Item:
    """Validated inputs of one request (or one max_batch slice of it), batch axis first and
    unpadded: what the model server stacks with other requests into one batch."""

    views: list  # of memoryview, in the manifest's input order
    rows: int
    length: int | None  # the sequence length of the views (None: no sequence axis)


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
    def __init__(self, model_dir: str | Path, device: str | None = None, variant: str | None = None):
        from .integrity import Integrity

        self.dir = Path(model_dir)
        self.manifest = m = manifest.read(self.dir)
        device = device or m.target.device
        # Which variant's libraries this CPU runs (runtime/cpu.py); the others are never
        # opened. A GPU model's host code is its one variant.
        choice = cpu.choose(m.variants, forced=variant, where=str(self.dir / manifest.FILENAME))
        self.variant: manifest.Variant = choice.variant
        self.variant_reason: str = choice.reason
        # Before anything below reads a file: sizes and code (dlopen runs it) verified now,
        # the weights' sha256 in the background until the first answer (runtime/integrity.py).
        self.integrity = Integrity(self.dir, m)
        self.inputs: tuple[Tensor, ...] = m.inputs
        self.outputs: tuple[Tensor, ...] = m.outputs
        self.task: str = m.model.task
        self.labels: tuple[str, ...] | None = m.labels
        self.max_batch: int = m.max_batch
        self.max_inputs: int = MAX_INPUTS
        if device == "cuda":
            check_cuda(self.dir, m)
        self.weights = (Weights(self.dir / m.weights.file, device, expect_count=m.weights.count)
                        if m.weights else None)
        weights = self.weights.tensors if self.weights else []
        for lib in self.variant.libraries:
            if any(not 0 <= i < len(weights) for i in lib.weights):
                raise manifest.ManifestError(f"{self.dir / manifest.FILENAME}: {lib.file} names weights "
                                             "model.weights lacks")
        # {compiled sequence length (None: no such dimension): module}, shortest first; each
        # holds its weight tensors, which keep the mapping alive.
        self.modules = {lib.seq: CompiledModule(self.dir / lib.file, device, weights=[weights[i] for i in lib.weights])
                        for lib in self.variant.libraries}
        self.seq_lengths = m.seq_lengths
        self._outputs_have_seq = any(o.seq_axis is not None for o in self.outputs)
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
            view = as_tensor(tensors[name], name, spec.dtype, max_ndim=len(spec.shape),
                             max_elements=self.max_elements(spec))
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

    def max_elements(self, spec: Tensor) -> int:
        """The most values input `spec` can hold: its shape at max batch and longest length."""
        longest = self.seq_lengths[-1] if self.seq_lengths else 1
        return math.prod(self.max_batch if d == "batch" else longest if d == "seq" else d if isinstance(d, int)
                         else 1 for d in spec.shape)

    def check_finite(self, outputs: dict) -> dict:
        """Outputs (one item's) without inf or nan, else BadInput: JSON has no such numbers,
        and the compiled code (fast math) gives them only for inputs outside the range it
        was made for, e.g. pixel values of 1e38."""
        for name, view in outputs.items():
            if not all_finite(view):
                raise BadInput(f'the model\'s output "{name}" is not finite for this input (inf or nan); '
                               "send values in the range the model was trained on")
        return outputs

    def prepare(self, tensors) -> Item:
        """Tensor mode: validated request tensors as one batchable item."""
        return self.item(self.check_tensors(tensors))

    def item(self, views: list[memoryview]) -> Item:
        """Validated views (in input order) as an item."""
        length = next((v.shape[s.seq_axis] for v, s in zip(views, self.inputs) if s.seq_axis is not None), None)
        return Item(views, views[0].shape[0] if views[0].ndim else 1, length)

    def compiled_length(self, length: int | None) -> int | None:
        """The shortest compiled sequence length that fits `length` (None: no such axis)."""
        if None in self.modules or length is None:
            return None
        return next(n for n in self.seq_lengths if n >= length)

    def batch_key(self, item: Item):
        """Items with equal keys may run in one batch. Outputs with a sequence axis come out
        at the compiled length, so such models batch only items of the same compiled length;
        otherwise any items batch, padded to the longest."""
        return self.compiled_length(item.length) if self._outputs_have_seq else None

    def execute(self, items: list[Item]) -> list[dict[str, memoryview]]:
        """Run items as one batch: each padded to the shortest compiled length that fits them
        all, rows stacked, and the output rows handed back per item."""
        self.integrity.wait()  # no answer from files not yet verified; immediate once they are
        return self._execute(items)

    def _execute(self, items: list[Item]) -> list[dict[str, memoryview]]:
        rows = sum(item.rows for item in items)
        if rows > self.max_batch:
            raise ValueError(f"a batch of {rows} rows exceeds the model's {self.max_batch}")
        seq = self.compiled_length(max((i.length for i in items if i.length is not None), default=None))
        module = self.modules[seq]
        views = []
        for n, spec in enumerate(self.inputs):
            parts = [_pad_seq(item.views[n], spec, seq) if seq is not None else item.views[n] for item in items]
            if len(parts) == 1:
                views.append(parts[0])
            else:  # C-contiguous, batch axis outermost: stacking rows is concatenating bytes
                shape = [rows, *parts[0].shape[1:]]
                views.append(shaped(bytearray(b"".join(p.cast("B") for p in parts)), spec.dtype, shape))
        results = module(views, [spec.dtype for spec in self.inputs])
        if len(items) == 1:
            return [{spec.name: out for spec, out in zip(self.outputs, results)}]
        per_item = [{} for _ in items]
        for spec, out in zip(self.outputs, results):
            raw, shape = out.cast("B"), list(out.shape)
            row_bytes = raw.nbytes // rows
            offset = 0
            for answer, item in zip(per_item, items):
                size = item.rows * row_bytes
                answer[spec.name] = shaped(raw[offset:offset + size], spec.dtype, [item.rows, *shape[1:]])
                offset += size
        return per_item

    def sample_item(self, seq: int | None = None, rows: int = 1) -> Item:
        """A request of `rows` rows at sequence length `seq` (None: the longest), filled
        with each input's pad value or the low end of its range."""
        seq = seq or (self.seq_lengths[-1] if self.seq_lengths else None)
        views = []
        for spec in self.inputs:
            shape = [rows if d == "batch" else seq if d == "seq" else d for d in spec.shape]
            fill = spec.range[0] if spec.range else (spec.pad or 0)
            views.append(shaped(pack([fill] * math.prod(shape), spec.dtype), spec.dtype, shape))
        return self.item(views)

    def warm(self) -> None:
        """One batch-1 call per compiled length, so the first request finds the code paged in
        and the VM's memory pools allocated (the model server before ready; the Lambda
        handler before a SnapStart snapshot). Overlaps the weights' verification, and ends
        only once it passed: a server is never ready, nor a snapshot taken, before."""
        for seq in self.seq_lengths or [None]:
            self._execute([self.sample_item(seq)])
        self.integrity.wait()

    def execute_each(self, items: list[Item]) -> list[dict[str, memoryview]]:
        """Items run one at a time, as a Lambda invocation does (one request per sandbox)."""
        return [self.execute([item])[0] for item in items]

    def run(self, tensors: dict) -> dict[str, memoryview]:
        """Tensor mode. Outputs are shaped memoryviews: `.tolist()` for JSON, and
        `numpy.asarray(view)` wraps one without a copy where numpy is installed."""
        return self.execute([self.prepare(tensors)])[0]

    # -- task mode ---------------------------------------------------------------------
    def encode(self, inputs) -> tuple[bool, list[Item]]:
        """Task mode: (whether one input was sent rather than a list, the encoded inputs as
        items of at most max_batch rows each)."""
        if self.encoder is None:
            raise BadInput("this model takes tensors only: send {\"tensors\": {...}}")
        single = isinstance(inputs, str)
        if isinstance(inputs, list) and len(inputs) > self.max_inputs:
            raise BadInput(f'"inputs" has {len(inputs)} entries; at most {self.max_inputs} are accepted per request')
        values = self.encoder.check(inputs)
        items = []
        for start in range(0, len(values), self.max_batch):
            tensors = self.encoder(values[start:start + self.max_batch])
            items.append(self.item([tensors[spec.name] for spec in self.inputs]))
        return single, items

    def check_parameters(self, parameters) -> dict:
        parameters = parameters or {}
        if not isinstance(parameters, dict):
            raise BadInput('"parameters" must be an object')
        if self.manifest.postprocessing.kind == "classification":
            top_k = parameters.get("top_k", self.manifest.postprocessing.top_k)
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.labels):
                raise BadInput(f'"parameters.top_k" must be an integer in 1..{len(self.labels)}')
        return parameters

    def predict(self, inputs, parameters: dict | None = None):
        parameters = self.check_parameters(parameters)
        single, items = self.encode(inputs)
        return self.answers(single, self.execute_each(items), parameters)

    def answers(self, single: bool, outputs: list[dict], parameters: dict):
        """Task-mode answers from the outputs of encode()'s items, in order."""
        result = [a for out in outputs for a in self._postprocess(self.check_finite(out), parameters)]
        return result[0] if single else result

    def _postprocess(self, out: dict, parameters: dict) -> list:
        post = self.manifest.postprocessing
        values = out[post.output]
        if post.kind == "embedding":
            return values.tolist()
        if post.kind == "classification":
            top_k = parameters.get("top_k", post.top_k)
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
                "target": m.target.name, "variant": self.variant.name, "versions": dataclasses.asdict(m.versions)}
