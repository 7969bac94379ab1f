"""What a model family hands to the compiler: a torch module with named inputs and outputs,
example inputs, and what the runtime needs to turn requests into tensors and back."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from builder.errors import ModelSourceError, UnsupportedModelError
from builder.options import BuildOptions
from runtime.manifest import ImagePreprocessing, NoPreprocessing, Postprocessing, Tensor, TextPreprocessing

@dataclasses.dataclass
class ModelSpec:
    family: str
    task: str
    architecture: str
    module: Any  # torch.nn.Module returning a tuple in `outputs` order
    inputs: list[Tensor]
    outputs: list[Tensor]
    # Several input sets (different batch sizes, padding) the build validates against torch.
    validation_inputs: list[dict]
    tolerance: dict  # {"atol": float, "rtol": float}: |ours - torch| <= atol + rtol * max|torch|
    preprocessing: TextPreprocessing | ImagePreprocessing | NoPreprocessing
    postprocessing: Postprocessing
    labels: list[str] | None = None
    # name -> bytes or source Path: files shipped next to model.so (tokenizer.json, ...)
    files: dict = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    # Inputs with a "seq" dimension: one library per length here (ascending), all sharing
    # the weights; a request runs on the shortest that fits, padded with each input's pad.
    seq_buckets: list[int] | None = None
    # The accuracy gate of quantized builds (builder/validate/accuracy.py): input batches
    # and a name per row (the sentence).
    accuracy_inputs: list[dict] | None = None
    accuracy_labels: list[str] | None = None


def default_buckets(seq_len: int) -> list[int]:
    """16, 32, 64, ... below seq_len, and seq_len: a request pays for at most twice its own
    length (at least 16 tokens) instead of always seq_len."""
    buckets, n = [], 16
    while n < seq_len:
        buckets.append(n)
        n *= 2
    return buckets + [seq_len]


def one_request(spec: ModelSpec) -> dict:
    """A batch-1 input set at the longest compiled length: what bench and tune time."""
    arrays = max(spec.validation_inputs, key=lambda a: (next(iter(a.values())).shape[1:], -len(next(iter(a.values())))))
    import numpy as np

    return {i.name: np.ascontiguousarray(arrays[i.name][:1]) for i in spec.inputs}


def fit_seq(arrays: dict, inputs: list[Tensor], length: int) -> dict:
    """Validation arrays padded (with each input's pad value) or cut to `length` along "seq"."""
    import numpy as np

    out = {}
    for spec in inputs:
        a = arrays[spec.name]
        if "seq" in spec.shape:
            axis = spec.shape.index("seq")
            if a.shape[axis] >= length:
                a = np.take(a, range(length), axis=axis)
            else:
                widths = [(0, 0)] * a.ndim
                widths[axis] = (0, length - a.shape[axis])
                a = np.pad(a, widths, constant_values=spec.pad)
        out[spec.name] = np.ascontiguousarray(a)
    return out


class Family:
    """One model family. Subclasses fill in the class attributes and `load`."""

    name: str = ""
    description: str = ""
    tasks: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    tolerance = {"atol": 1e-4, "rtol": 1e-4}

    def matches(self, config: dict) -> bool:
        archs = config.get("architectures") or []
        return any(a in self.architectures for a in archs) or (
            not archs and config.get("model_type") in self.model_types
        )

    def default_task(self, config: dict) -> str:
        raise NotImplementedError

    def load(self, model_dir: Path, config: dict, task: str, options: BuildOptions) -> ModelSpec:
        raise NotImplementedError


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelSourceError(f"{what} not found", where=str(path),
                               hint="point MODEL at a Hugging Face model directory") from None
    except json.JSONDecodeError as e:
        raise ModelSourceError(f"{what} is not valid JSON: {e}", where=str(path)) from None


def check_task(family: Family, task: str) -> None:
    if task not in family.tasks:
        raise UnsupportedModelError(
            f"task {task!r} is not supported by the {family.name} family",
            hint=f"use one of: {', '.join(family.tasks)}",
        )


def id2label(config: dict) -> list[str] | None:
    mapping = config.get("id2label")
    if not mapping:
        return None
    items = sorted(((int(k), v) for k, v in mapping.items()))
    return [v for _, v in items]


def quiet_transformers() -> None:
    """Our progress lines say what is happening; transformers' bars and notices would bury them."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
