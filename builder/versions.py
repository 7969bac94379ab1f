"""Versions recorded in every manifest and pinned into every bundle."""
from __future__ import annotations

import importlib.metadata
import platform

# 0.2.0: manifest schema 2 (runtime/manifest.py).
EDGEBUNDLE_VERSION = "0.2.0"


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_versions() -> dict:
    return {
        "edgebundle": EDGEBUNDLE_VERSION,
        "tvm": dist_version("apache-tvm"),
        "tvm_ffi": dist_version("apache-tvm-ffi"),
        "torch": dist_version("torch"),
        "transformers": dist_version("transformers"),
        "build_python": platform.python_version(),
    }
