"""Loading a compiled model with nothing but tvm_ffi and libtvm_runtime.so.

The `tvm` compiler package is 300 MB and never ships; a bundle carries only
libtvm_runtime.so (3.4 MB) and the apache-tvm-ffi wheel.
"""
from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import sys
from pathlib import Path

DEVICE_TYPES = {"cpu": 1, "cuda": 2}
_POOLED_ALLOCATOR = 2
_loaded_runtime: str | None = None


def available_cpus() -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _candidates(model_dir: Path) -> list[Path]:
    found = []
    if os.environ.get("EDGEBUNDLE_LIBTVM_RUNTIME"):
        found.append(Path(os.environ["EDGEBUNDLE_LIBTVM_RUNTIME"]))
    found += [model_dir / "libtvm_runtime.so", Path(__file__).resolve().parent.parent / "libtvm_runtime.so"]
    # A development install: the apache-tvm package's copy, located without importing it.
    try:
        spec = importlib.util.find_spec("tvm")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found.append(Path(loc) / "lib" / "libtvm_runtime.so")
    return found


def load_tvm_runtime(model_dir: Path) -> str:
    """dlopen libtvm_runtime.so once per process; returns its path."""
    global _loaded_runtime
    if _loaded_runtime:
        return _loaded_runtime
    # TVM's thread pool reads this once, when the library loads; without it TVM uses 1
    # thread on small machines. Lambda's vCPU count grows with the function's memory.
    os.environ.setdefault("TVM_NUM_THREADS", str(available_cpus()))
    # libtvm_runtime.so links libtvm_ffi.so, which importing tvm_ffi loads first.
    import tvm_ffi  # noqa: F401

    if "tvm" in sys.modules:  # the builder process already has the compiler's runtime
        path = Path(sys.modules["tvm"].__file__).parent / "lib" / "libtvm_runtime.so"
        _loaded_runtime = str(path)
        return _loaded_runtime
    tried = _candidates(model_dir)
    for path in tried:
        if path.is_file():
            ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
            _loaded_runtime = str(path)
            return _loaded_runtime
    raise FileNotFoundError(
        "libtvm_runtime.so not found; looked in: " + ", ".join(map(str, tried))
        + ". Set EDGEBUNDLE_LIBTVM_RUNTIME or install apache-tvm.")


_ALIGN = 64


def aligned(a):
    """A C-contiguous copy of `a` whose data starts on a 64-byte boundary.

    TVM's kernels are compiled for buffers with 64-byte alignment and use aligned vector
    loads; numpy only guarantees 16 bytes for small arrays, and a misaligned input
    segfaults inside the compiled code (seen with a 1x32 int64 input)."""
    import numpy as np

    a = np.asarray(a)
    if a.flags.c_contiguous and a.ctypes.data % _ALIGN == 0:
        return a
    raw = np.empty(a.nbytes + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    out = raw[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


class CompiledModule:
    """A Relax VM over model.so on one device."""

    def __init__(self, so_path: Path, device: str = "cpu", device_id: int = 0):
        import tvm_ffi

        load_tvm_runtime(so_path.parent)
        if device not in DEVICE_TYPES:
            raise ValueError(f"unknown device {device!r}")
        self._lib = tvm_ffi.load_module(str(so_path.resolve()))
        self._exe = self._lib["vm_load_executable"]()
        self._exe["vm_initialization"](DEVICE_TYPES[device], device_id, _POOLED_ALLOCATOR,
                                       DEVICE_TYPES["cpu"], 0, _POOLED_ALLOCATOR)
        self._main = self._exe["main"]
        self.device = device

    def __call__(self, *arrays):
        import numpy as np
        import tvm_ffi

        args = [tvm_ffi.from_dlpack(aligned(a)) for a in arrays]
        out = self._main(*args)
        if not isinstance(out, (list, tuple)) and not hasattr(out, "__len__"):
            out = [out]
        # Copy out: the VM's pooled allocator reuses output memory on the next call.
        return [np.array(np.from_dlpack(o), copy=True) for o in out]
