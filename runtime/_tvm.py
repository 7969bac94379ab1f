"""Loading a compiled model with nothing but libtvm_ffi.so and libtvm_runtime.so.

The `tvm` compiler package is 300 MB and never ships; a bundle carries only
libtvm_runtime.so (3.4 MB; plus libtvm_runtime_cuda.so for GPU models) and libtvm_ffi.so
from the apache-tvm-ffi wheel, called through ctypes (runtime/_ffi.py).
"""
from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import struct
import sys
import threading
from pathlib import Path

from . import _ffi
from .arrays import WEIGHT_SIZES, shaped
from .errors import DeviceUnavailable
from .manifest import IntegrityError

DEVICE_TYPES = {"cpu": 1, "cuda": 2}
_POOLED_ALLOCATOR = 2
_DEVICE_ATTR_EXIST = 0
_DEVICE_ATTR_COMPUTE_VERSION = 4
_loaded: dict[str, str] = {}
# model.weights (builder/compiler/weights.py writes it): magic, u64 header length, JSON header, data
# from the next multiple of WEIGHTS_ALIGN, each tensor at a multiple of it.
WEIGHTS_MAGIC = b"EBWEIGHT"
WEIGHTS_HEADER = 16
WEIGHTS_ALIGN = 64


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


def _installed_package_dirs(package: str) -> list[Path]:
    """Where pip installed `package` (development: the apache-tvm / apache-tvm-ffi wheels),
    found as the import system finds it but without importing it (importing tvm_ffi is what
    runtime/_ffi.py avoids) and on absolute sys.path entries only, never the working
    directory: '' (python -c, the REPL) or a relative entry means the cwd, and a
    libtvm_runtime.so planted there would be dlopen'ed, running its code in this process.
    PathFinder rather than importlib.util.find_spec: it takes the filtered path, and skips
    sys.meta_path hooks (a blocking hook raises instead of answering None)."""
    from importlib.machinery import PathFinder

    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:  # the working directory was removed: nothing can equal it
        cwd = None
    entries = [e for e in sys.path if isinstance(e, str) and os.path.isabs(e) and os.path.realpath(e) != cwd]
    try:
        spec = PathFinder.find_spec(package, entries)
    except (ImportError, OSError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) for location in spec.submodule_search_locations]


def _candidates(model_dir: Path, name: str, package: str) -> list[Path]:
    """Where `name` may be: beside an explicit libtvm_runtime.so, the model, the bundle root,
    then (development) the pip package that ships it, located without importing it."""
    found = []
    if os.environ.get("EDGEBUNDLE_LIBTVM_RUNTIME"):
        found.append(Path(os.environ["EDGEBUNDLE_LIBTVM_RUNTIME"]).with_name(name))
    found += [model_dir / name, Path(__file__).resolve().parent.parent / name]
    if package in sys.modules:  # the builder process already holds the compiler's copy
        found.insert(0, Path(sys.modules[package].__file__).parent / "lib" / name)
    found += [location / "lib" / name for location in _installed_package_dirs(package)]
    return found


def _dlopen(model_dir: Path, name: str, package: str) -> str:
    if name in _loaded:
        return _loaded[name]
    tried = _candidates(model_dir, name, package)
    for path in tried:
        if path.is_file():
            if name == "libtvm_ffi.so":
                _ffi.load(str(path))
            else:
                ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
            _loaded[name] = str(path)
            return _loaded[name]
    dist = "apache-tvm-ffi" if package == "tvm_ffi" else "apache-tvm"
    raise FileNotFoundError(f"{name} not found; looked in: " + ", ".join(map(str, tried))
                            + f". A bundle has it at its root; for development install {dist}, or put it beside "
                            "the file EDGEBUNDLE_LIBTVM_RUNTIME names.")


CUDART = "libcudart.so.13"


def _preload_cudart() -> str | None:
    """dlopen libcudart.so.13 from NVIDIA's nvidia-cuda-runtime wheel (nvidia/cu13/lib) when
    one is on sys.path: the serving image vendors it instead of a CUDA base image. Loaded
    globally first, the loader then satisfies libtvm_runtime_cuda.so's DT_NEEDED with it
    (glibc matches an already loaded library by soname). Without the wheel, the system
    loader's search (ldconfig, LD_LIBRARY_PATH, RUNPATH $ORIGIN) decides, as before."""
    if CUDART in _loaded:
        return _loaded[CUDART]
    for location in _installed_package_dirs("nvidia"):
        path = location / "cu13" / "lib" / CUDART
        if path.is_file():
            ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
            _loaded[CUDART] = str(path)
            return _loaded[CUDART]
    return None


def load_tvm_runtime(model_dir: Path, device: str = "cpu") -> str:
    """dlopen libtvm_ffi.so, libtvm_runtime.so (and its CUDA part for GPU models) once per process."""
    # TVM's thread pool reads this once, when the library loads; without it TVM uses 1
    # thread on small machines. Lambda's vCPU count grows with the function's memory.
    os.environ.setdefault("TVM_NUM_THREADS", str(available_cpus()))
    # libtvm_runtime.so links libtvm_ffi.so: loaded first, globally, so the loader reuses it.
    _dlopen(model_dir, "libtvm_ffi.so", "tvm_ffi")
    path = _dlopen(model_dir, "libtvm_runtime.so", "tvm")
    if device == "cuda":
        try:
            _preload_cudart()
            _dlopen(model_dir, "libtvm_runtime_cuda.so", "tvm")
        except OSError as e:
            msg = str(e)
            if "libcuda.so" in msg:
                raise DeviceUnavailable(
                    "cuda: the NVIDIA driver library libcuda.so.1 is not installed here, so this GPU model "
                    "cannot run; run it on a machine with an NVIDIA GPU and driver (containers: --gpus all)"
                ) from None
            if "libcudart.so" in msg:
                raise DeviceUnavailable(
                    "cuda: the CUDA 13 runtime library (libcudart.so.13) is not found; pip install "
                    "nvidia-cuda-runtime (13.x) beside the bundle, install the CUDA 13 runtime (cuda-cudart-13), "
                    "or use a bundle format that ships it (serve-image)") from None
            raise DeviceUnavailable(f"cuda: cannot load TVM's CUDA runtime: {msg}") from None
        exists = _ffi.get_global("runtime.GetDeviceAttr")(DEVICE_TYPES["cuda"], 0, _DEVICE_ATTR_EXIST)
        if not exists:
            raise DeviceUnavailable("cuda: no CUDA device is visible (cuda:0); check nvidia-smi, "
                                    "CUDA_VISIBLE_DEVICES, and that the container was started with GPUs")
    return path


def cuda_compute_capability(device_id: int = 0) -> str:
    """"8.6" for an A10G: what the driver reports for cuda:device_id (runtime loaded)."""
    return str(_ffi.get_global("runtime.GetDeviceAttr")(DEVICE_TYPES["cuda"], device_id, _DEVICE_ATTR_COMPUTE_VERSION))


def _damaged(path: Path, what: str):
    return IntegrityError(f"{path} {what}: the weights file is damaged or belongs to another build; "
                          f"{IntegrityError.REMEDY}")


def _int(value) -> bool:
    return type(value) is int  # not bool, not float: JSON true or 1.0 is not a size


def check_table(path: Path, entries: list, data_bytes: int) -> None:
    """model.weights' tensor table against the format (weights.py in builder/compiler writes
    it): each tensor a known dtype, dims >= 0, nbytes exactly its shape's, at a multiple of
    WEIGHTS_ALIGN from the data start, inside the file, no two overlapping.

    The VM does not check weight arguments (they became parameters after its checks were
    generated) and the views below are raw addresses: an entry this lets through would be
    read (or, mapped copy-on-write, written) outside the file by compiled code."""
    spans = []
    for n, e in enumerate(entries):
        desc = f"tensor {n} of its table"
        if not (isinstance(e, dict) and isinstance(e.get("dtype"), str) and isinstance(e.get("shape"), list)):
            raise _damaged(path, f"has a malformed {desc}")
        dtype, shape, offset, nbytes = e["dtype"], e["shape"], e.get("offset"), e.get("nbytes")
        desc += f" ({dtype}{shape}, offset {offset}, {nbytes} bytes)"
        if dtype not in WEIGHT_SIZES:
            raise _damaged(path, f"has {desc} of a dtype this runtime does not read")
        if not all(_int(d) and d >= 0 for d in shape):
            raise _damaged(path, f"has {desc} with a dimension that is not an integer >= 0")
        if not (_int(offset) and offset >= 0 and _int(nbytes) and nbytes >= 0):
            raise _damaged(path, f"has {desc} with an offset or size that is not an integer >= 0")
        if offset % WEIGHTS_ALIGN:
            raise _damaged(path, f"has {desc} not at a multiple of {WEIGHTS_ALIGN} bytes")
        if nbytes != math.prod(shape) * WEIGHT_SIZES[dtype]:
            raise _damaged(path, f"has {desc} whose size is not its shape's")
        if offset + nbytes > data_bytes:
            raise _damaged(path, f"has {desc} past the end of the file ({data_bytes} bytes of data)")
        if nbytes:
            spans.append((offset, nbytes, n))
    spans.sort()
    for (a, a_bytes, i), (b, _, j) in zip(spans, spans[1:]):
        if a + a_bytes > b:
            raise _damaged(path, f"has tensors {i} and {j} of its table overlapping")


class Weights:
    """model.weights mapped copy-on-write and wrapped in place on a CPU: no copy, pages
    shared with the page cache (and between processes). For a GPU, copied to device memory
    once and unmapped."""

    def __init__(self, path: Path, device: str = "cpu", device_id: int = 0, expect_count: int | None = None):
        load_tvm_runtime(path.parent, device)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(WEIGHTS_HEADER)
            if len(head) < WEIGHTS_HEADER or head[:8] != WEIGHTS_MAGIC:
                raise _damaged(path, "is not an edgebundle weights file (no EBWEIGHT header)")
            (length,) = struct.unpack("<Q", head[8:])
            if length > size - WEIGHTS_HEADER:  # before reading: a bogus length would allocate it
                raise _damaged(path, f"has a table of {length} bytes in a file of {size}")
            try:
                header = json.loads(f.read(length))
            except (ValueError, RecursionError):
                raise _damaged(path, "has an unreadable table") from None
            start = -(-(WEIGHTS_HEADER + length) // WEIGHTS_ALIGN) * WEIGHTS_ALIGN
            entries = header.get("tensors") if isinstance(header, dict) else None
            if not isinstance(entries, list):
                raise _damaged(path, "has no tensor table")
            if expect_count is not None and len(entries) != expect_count:
                raise _damaged(path, f"has {len(entries)} tensors, the manifest says {expect_count}")
            check_table(path, entries, size - start)
            # Not MAP_POPULATE: populating BERT-base's 434 MB took 140 ms, while faulting the
            # pages in lazily (the kernel maps 16 at a time) added ~15 ms to the first request.
            mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if len(mapping) != size:  # changed under us between fstat and mmap
            mapping.close()
            raise _damaged(path, "changed while it was loaded")
        base = _ffi.address(mapping) + start
        self.tensors = []
        if device == "cpu":
            cpu = _ffi.DLDevice(DEVICE_TYPES["cpu"], 0)
            self.tensors = [_ffi.tensor_view(base + e["offset"], e["shape"], e["dtype"], cpu, mapping)
                            for e in entries]
        else:
            dev = _ffi.DLDevice(DEVICE_TYPES[device], device_id)
            shape, alloc = _ffi.get_global("ffi.Shape"), _ffi.get_global("runtime.TVMTensorAllocWithScope")
            copy = _ffi.get_global("runtime.TVMTensorCopyFromBytes")
            for e in entries:
                t = alloc(shape(*e["shape"]), _ffi.dtype_of(e["dtype"]), dev, None)
                copy(t, ctypes.c_void_p(base + e["offset"]), e["nbytes"])
                self.tensors.append(t)
            mapping.close()


class CompiledModule:
    """A Relax VM over model.so on one device (cpu, or cuda:device_id).

    Inputs are copied into tensors TVM allocates (64-byte aligned, as the compiled kernels
    assume: a 16-byte aligned numpy input segfaulted one); TVMTensorCopyFromBytes/ToBytes
    also move data to and from a GPU."""

    def __init__(self, so_path: Path, device: str = "cpu", device_id: int = 0, weights: list = ()):
        if device not in DEVICE_TYPES:
            raise ValueError(f"unknown device {device!r}")
        load_tvm_runtime(so_path.parent, device)
        self._lib = _ffi.get_global("ffi.ModuleLoadFromFile")(str(so_path.resolve()))
        # Functions of a dlopen'ed library must never outlive it: pin it for the process.
        _ffi.get_global("ffi.ModuleGlobalsAdd")(self._lib)
        get = _ffi.get_global("ffi.ModuleGetFunction")
        self._exe = get(self._lib, "vm_load_executable", False)()
        get(self._exe, "vm_initialization", False)(DEVICE_TYPES[device], device_id, _POOLED_ALLOCATOR,
                                                   DEVICE_TYPES["cpu"], 0, _POOLED_ALLOCATOR)
        self._main = get(self._exe, "main", False)
        self.device = device
        self._dev = _ffi.DLDevice(DEVICE_TYPES[device], device_id)
        self._shape = _ffi.get_global("ffi.Shape")
        self._alloc = _ffi.get_global("runtime.TVMTensorAllocWithScope")
        self._from_bytes = _ffi.get_global("runtime.TVMTensorCopyFromBytes")
        self._to_bytes = _ffi.get_global("runtime.TVMTensorCopyToBytes")
        self.weights = list(weights)
        self._packed_weights, self._n_inputs = None, 0
        # One call at a time: the VM's registers and pooled output memory are not re-entrant
        # (ctypes releases the GIL during the call).
        self._lock = threading.Lock()

    def _tensor(self, view: memoryview, dtype: str):
        raw = view.cast("B")
        if raw.readonly:  # ctypes takes addresses of writable buffers only
            raw = memoryview(bytearray(raw))
        t = self._alloc(self._shape(*view.shape), _ffi.dtype_of(dtype), self._dev, None)
        if raw.nbytes:
            self._from_bytes(t, ctypes.c_void_p(_ffi.address(raw)), raw.nbytes)
        return t

    def _view(self, t) -> memoryview:
        # A copy, always: the VM's pooled allocator reuses output memory on the next call.
        nbytes = t.nbytes
        buf = bytearray(nbytes)
        if nbytes:
            self._to_bytes(t, ctypes.c_void_p(_ffi.address(buf)), nbytes)
        return shaped(buf, t.dtype, t.shape)

    def __call__(self, views: list[memoryview], dtypes: list[str]) -> list[memoryview]:
        inputs = [self._tensor(v, d) for v, d in zip(views, dtypes)]
        with self._lock:
            return self._call(inputs)

    def _call(self, inputs: list) -> list[memoryview]:
        if self._packed_weights is None or len(inputs) != self._n_inputs:
            self._n_inputs = len(inputs)
            self._packed_weights = _ffi.pack_args([None] * len(inputs) + self.weights)
        args = type(self._packed_weights).from_buffer_copy(self._packed_weights)
        for slot, t in zip(args, inputs):
            slot.type_index, slot.v.v_ptr = t.type_index, t.handle
        out = self._main.call_packed(args, len(inputs) + len(self.weights))
        outs = [out] if out.type_index == _ffi.TENSOR else out.items()
        return [self._view(o) for o in outs]
