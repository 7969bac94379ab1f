"""edgebundle's runtime: shipped inside every bundle.

Imports only the standard library (plus tokenizers / Pillow for text and image
preprocessing); TVM is libtvm_ffi.so + libtvm_runtime.so through ctypes. Never numpy,
torch, the tvm or tvm_ffi Python packages, or `builder`.
"""
from __future__ import annotations

from .cpu import VariantError
from .errors import BadInput, DeviceUnavailable
from .manifest import IntegrityError, ManifestError
from .model import Model


def load(model_dir, device: str | None = None, variant: str | None = None) -> Model:
    """Load OUT/<target>/ (model.json, the libraries and model.weights it lists, and the
    preprocessing files). `variant`: one of the manifest's CPU variants instead of the one
    runtime/cpu.py picks for this CPU (as EDGEBUNDLE_CPU_VARIANT does)."""
    return Model(model_dir, device=device, variant=variant)


__all__ = ["BadInput", "DeviceUnavailable", "IntegrityError", "ManifestError", "Model", "VariantError", "load"]
