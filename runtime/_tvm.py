"""Loading a compiled model with nothing but tvm_ffi and libtvm_runtime.so.

The `tvm` compiler package is 300 MB and never ships; a bundle carries only
libtvm_runtime.so (3.4 MB; plus libtvm_runtime_cuda.so for GPU models) and the
apache-tvm-ffi wheel.
"""
from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import sys
from pathlib import Path

from .errors import DeviceUnavailable

DEVICE_TYPES = {"cpu": 1, "cuda": 2}
_POOLED_ALLOCATOR = 2
_DEVICE_ATTR_EXIST = 0
_loaded: dict[str, str] = {}


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


def _candidates(model_dir: Path, name: str) -> list[Path]:
    found = []
    if os.environ.get("EDGEBUNDLE_LIBTVM_RUNTIME"):
        found.append(Path(os.environ["EDGEBUNDLE_LIBTVM_RUNTIME"]).with_name(name))
    found += [model_dir / name, Path(__file__).resolve().parent.parent / name]
    if "tvm" in sys.modules:  # the builder process already holds the compiler's runtime
        found.insert(0, Path(sys.modules["tvm"].__file__).parent / "lib" / name)
    # A development install: the apache-tvm package's copy, located without importing it.
    try:
        spec = importlib.util.find_spec("tvm")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found.append(Path(loc) / "lib" / name)
    return found


def _dlopen(model_dir: Path, name: str) -> str:
    if name in _loaded:
        return _loaded[name]
    tried = _candidates(model_dir, name)
    for path in tried:
        if path.is_file():
            ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
            _loaded[name] = str(path)
            return _loaded[name]
    raise FileNotFoundError(f"{name} not found; looked in: " + ", ".join(map(str, tried))
                            + ". Set EDGEBUNDLE_LIBTVM_RUNTIME or install apache-tvm.")


def load_tvm_runtime(model_dir: Path, device: str = "cpu") -> str:
    """dlopen libtvm_runtime.so (and its CUDA part for GPU models) once per process."""
    # TVM's thread pool reads this once, when the library loads; without it TVM uses 1
    # thread on small machines. Lambda's vCPU count grows with the function's memory.
    os.environ.setdefault("TVM_NUM_THREADS", str(available_cpus()))
    # libtvm_runtime.so links libtvm_ffi.so, which importing tvm_ffi loads first.
    import tvm_ffi

    path = _dlopen(model_dir, "libtvm_runtime.so")
    if device == "cuda":
        try:
            _dlopen(model_dir, "libtvm_runtime_cuda.so")
        except OSError as e:
            msg = str(e)
            if "libcuda.so" in msg:
                raise DeviceUnavailable(
                    "cuda: the NVIDIA driver library libcuda.so.1 is not installed here, so this GPU model "
                    "cannot run; run it on a machine with an NVIDIA GPU and driver (containers: --gpus all)"
                ) from None
            if "libcudart.so" in msg:
                raise DeviceUnavailable(
                    "cuda: the CUDA 13 runtime library (libcudart.so.13) is not found; install the CUDA 13 "
                    "runtime (cuda-cudart-13) or use a bundle format that ships it") from None
            raise DeviceUnavailable(f"cuda: cannot load TVM's CUDA runtime: {msg}") from None
        exists = tvm_ffi.get_global_func("runtime.GetDeviceAttr")(DEVICE_TYPES["cuda"], 0, _DEVICE_ATTR_EXIST)
        if not exists:
            raise DeviceUnavailable("cuda: no CUDA device is visible (cuda:0); check nvidia-smi, "
                                    "CUDA_VISIBLE_DEVICES, and that the container was started with GPUs")
    return path


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
    """A Relax VM over model.so on one device (cpu, or cuda:device_id)."""

    def __init__(self, so_path: Path, device: str = "cpu", device_id: int = 0):
        import tvm_ffi

        if device not in DEVICE_TYPES:
            raise ValueError(f"unknown device {device!r}")
        load_tvm_runtime(so_path.parent, device)
        self._lib = tvm_ffi.load_module(str(so_path.resolve()))
        self._exe = self._lib["vm_load_executable"]()
        self._exe["vm_initialization"](DEVICE_TYPES[device], device_id, _POOLED_ALLOCATOR,
                                       DEVICE_TYPES["cpu"], 0, _POOLED_ALLOCATOR)
        self._main = self._exe["main"]
        self.device = device
        if device != "cpu":
            self._dev = tvm_ffi.device(device, device_id)
            self._cpu = tvm_ffi.device("cpu", 0)
            self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
            self._copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")

    def _to_device(self, host):
        if self.device == "cpu":
            return host
        out = self._alloc(host.shape, host.dtype, self._dev, None)
        self._copy(host, out)
        return out

    def _to_numpy(self, t):
        import numpy as np

        if self.device != "cpu":
            host = self._alloc(t.shape, t.dtype, self._cpu, None)
            self._copy(t, host)
            t = host
        # Copy out: the VM's pooled allocator reuses output memory on the next call.
        return np.array(np.from_dlpack(t), copy=True)

    def __call__(self, *arrays):
        import tvm_ffi

        host = [aligned(a) for a in arrays]  # kept alive until the call returns
        out = self._main(*[self._to_device(tvm_ffi.from_dlpack(a)) for a in host])
        if isinstance(out, tvm_ffi.Tensor):
            out = [out]
        return [self._to_numpy(o) for o in out]
