"""edgebundle's runtime: shipped inside every bundle.

Imports only the standard library, numpy and tvm_ffi (plus tokenizers / Pillow for text
and image preprocessing). Never torch, the `tvm` compiler package, or `builder`.
"""
from __future__ import annotations

from .errors import BadInput, DeviceUnavailable
from .model import Model


def load(model_dir, device: str | None = None) -> Model:
    """Load OUT/<target>/ (model.json + model.so + preprocessing files)."""
    return Model(model_dir, device=device)


__all__ = ["BadInput", "DeviceUnavailable", "Model", "load"]
