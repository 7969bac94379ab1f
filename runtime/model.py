"""A compiled model as its manifest describes it: tensor mode (`run`) and task mode
(`predict`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._tvm import CompiledModule
from .errors import BadInput

_INT_KINDS = "iu"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Model:
    def __init__(self, model_dir: str | Path, device: str | None = None):
        self.dir = Path(model_dir)
        self.manifest = json.loads((self.dir / "model.json").read_text())
        m = self.manifest
        self.inputs: list[dict] = m["inputs"]
        self.outputs: list[dict] = m["outputs"]
        self.task: str = m["model"]["task"]
        self.labels: list[str] | None = m.get("labels")
        self.max_batch: int = int(m.get("max_batch", 32))
        self.module = CompiledModule(self.dir / m["library"], device or m["target"]["device"])
        pre = m["preprocessing"]
        if pre["kind"] == "text":
            from .text import TextEncoder

            self.encoder = TextEncoder(self.dir, pre)
        elif pre["kind"] == "image":
            from .image import ImageEncoder

            self.encoder = ImageEncoder(pre)
        else:
            self.encoder = None

    # -- tensor mode -------------------------------------------------------------------
    def check_tensors(self, tensors) -> list[np.ndarray]:
        if not isinstance(tensors, dict):
            raise BadInput('"tensors" must be an object mapping input names to arrays')
        names = [i["name"] for i in self.inputs]
        unknown = sorted(set(tensors) - set(names))
        missing = [n for n in names if n not in tensors]
        if unknown or missing:
            raise BadInput(f"tensor inputs must be exactly {names}"
                           + (f"; missing {missing}" if missing else "")
                           + (f"; unknown {unknown}" if unknown else ""))
        arrays, symbols = [], {}
        for spec in self.inputs:
            name, dtype = spec["name"], np.dtype(spec["dtype"])
            try:
                arr = np.asarray(tensors[name])
            except (ValueError, TypeError):
                raise BadInput(f'"{name}" is not a rectangular array') from None
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise BadInput(f'"{name}" must hold numbers (got {arr.dtype})')
            if dtype.kind in _INT_KINDS and arr.dtype.kind == "f":
                raise BadInput(f'"{name}" must hold integers ({spec["dtype"]}), got floats')
            shape = spec["shape"]
            if arr.ndim != len(shape):
                raise BadInput(f'"{name}" has shape {list(arr.shape)}, expected {shape}')
            for dim, want in zip(arr.shape, shape):
                if isinstance(want, str):
                    if symbols.setdefault(want, dim) != dim:
                        raise BadInput(f'"{name}" has {want}={dim}, other inputs have {symbols[want]}')
                    if want == "batch" and not 1 <= dim <= self.max_batch:
                        raise BadInput(f'"{name}" has batch {dim}; 1..{self.max_batch} accepted')
                elif dim != want:
                    raise BadInput(f'"{name}" has shape {list(arr.shape)}, expected {shape}')
            rng = spec.get("range")
            # Out-of-range indices would read outside an embedding table in compiled code.
            if rng is not None and arr.size and (arr.min() < rng[0] or arr.max() >= rng[1]):
                raise BadInput(f'"{name}" values must be in [{rng[0]}, {rng[1]})')
            arrays.append(np.ascontiguousarray(arr, dtype=dtype))
        return arrays

    def run(self, tensors: dict) -> dict[str, np.ndarray]:
        results = self.module(*self.check_tensors(tensors))
        return {spec["name"]: out for spec, out in zip(self.outputs, results)}

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
        post = self.manifest["postprocessing"]
        values = out[post["output"]]
        if post["kind"] == "embedding":
            return values.tolist()
        if post["kind"] == "classification":
            top_k = parameters.get("top_k", post["top_k"])
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.labels):
                raise BadInput(f'"parameters.top_k" must be an integer in 1..{len(self.labels)}')
            scores = _sigmoid(values) if post["function"] == "sigmoid" else _softmax(values)
            result = []
            for row in scores:
                order = np.argsort(-row, kind="stable")[:top_k]
                result.append([{"label": self.labels[i], "score": float(row[i])} for i in order])
            return result
        raise ValueError(f"unknown postprocessing {post['kind']!r}")

    def info(self) -> dict:
        m = self.manifest
        return {"model": m["model"], "inputs": self.inputs, "outputs": self.outputs,
                "labels": self.labels, "target": m["target"]["name"], "versions": m["versions"]}
