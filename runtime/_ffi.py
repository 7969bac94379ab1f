"""The few TVM FFI calls a bundle makes, through libtvm_ffi.so's C ABI with ctypes.

Importing the apache-tvm-ffi Python package costs ~85 ms on every cold start (it imports
importlib.metadata, typing_extensions, its C++ build helpers and tries torch) and 6 MB in
the bundle; a Lambda cold start pays for all of it. What runtime/ needs is small: global
functions, module functions, calls with ints/strings/tensors, tensor results. The layouts
used here are the stable C ABI in tvm/ffi/c_api.h (TVMFFIAny, TVMFFIObject header, DLTensor,
TVMFFISeqCell, TVMFFIErrorCell), pinned with apache-tvm-ffi in pyproject.toml.
"""
from __future__ import annotations

import ctypes
import math

# TVMFFITypeIndex
NONE, INT, BOOL, FLOAT, OPAQUE_PTR, DATA_TYPE, DEVICE, RAW_STR, SMALL_STR = 0, 1, 2, 3, 4, 5, 6, 8, 11
STATIC_OBJECT_BEGIN, STR, ERROR, FUNCTION, TENSOR, ARRAY = 64, 65, 67, 68, 70, 71
# The C ABI these layouts follow (tvm/ffi/c_api.h of apache-tvm-ffi 0.1.x, pinned).
ABI_VERSION = (0, 1)

# DLDataTypeCode
_DTYPES = {"int": 0, "uint": 1, "float": 2, "bool": 6}
_DTYPE_NAMES = {0: "int", 1: "uint", 2: "float", 6: "bool"}


class _Value(ctypes.Union):
    _fields_ = [("v_int64", ctypes.c_int64), ("v_float64", ctypes.c_double), ("v_ptr", ctypes.c_void_p),
                ("v_bytes", ctypes.c_char * 8)]


class Any(ctypes.Structure):
    _fields_ = [("type_index", ctypes.c_int32), ("zero_padding", ctypes.c_uint32), ("v", _Value)]


class ByteArray(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


_OBJECT_HEADER = 24  # TVMFFIObject: ref count u64, type_index i32, padding u32, deleter pointer
_lib: ctypes.CDLL | None = None


def dtype_of(name: str) -> DLDataType:
    for prefix, code in _DTYPES.items():
        if name.startswith(prefix):
            bits = name[len(prefix):]
            return DLDataType(code, int(bits) if bits else 8, 1)
    raise ValueError(f"unsupported dtype {name!r}")


def dtype_name(dt: DLDataType) -> str:
    name = _DTYPE_NAMES[dt.code]
    return "bool" if name == "bool" else f"{name}{dt.bits}"


def load(path: str) -> None:
    """dlopen libtvm_ffi.so (RTLD_GLOBAL: libtvm_runtime.so and model.so link against it)."""
    global _lib
    if _lib is not None:
        return
    lib = ctypes.CDLL(path, ctypes.RTLD_GLOBAL)
    lib.TVMFFIFunctionGetGlobal.argtypes = [ctypes.POINTER(ByteArray), ctypes.POINTER(ctypes.c_void_p)]
    lib.TVMFFIFunctionCall.argtypes = [ctypes.c_void_p, ctypes.POINTER(Any), ctypes.c_int32, ctypes.POINTER(Any)]
    lib.TVMFFIObjectDecRef.argtypes = [ctypes.c_void_p]
    lib.TVMFFIObjectIncRef.argtypes = [ctypes.c_void_p]
    lib.TVMFFIErrorMoveFromRaised.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.TVMFFIErrorMoveFromRaised.restype = None
    lib.TVMFFITensorFromDLPack.argtypes = [ctypes.POINTER(DLManagedTensor), ctypes.c_int32, ctypes.c_int32,
                                           ctypes.POINTER(ctypes.c_void_p)]
    version = (ctypes.c_uint32 * 3)()
    lib.TVMFFIGetVersion.argtypes = [ctypes.c_void_p]
    lib.TVMFFIGetVersion.restype = None
    lib.TVMFFIGetVersion(version)
    if tuple(version[:2]) != ABI_VERSION:
        raise OSError(f"{path} is tvm-ffi {'.'.join(map(str, version))}; this runtime speaks its "
                      f"{'.'.join(map(str, ABI_VERSION))}.x C ABI (rebuild the bundle with the pinned apache-tvm-ffi)")
    _lib = lib


class TVMError(RuntimeError):
    """An error raised inside TVM (kind: message)."""


def _raise_last(what: str):
    handle = ctypes.c_void_p()
    _lib.TVMFFIErrorMoveFromRaised(ctypes.byref(handle))
    if not handle.value:
        raise TVMError(f"{what} failed (no error recorded)")
    try:
        kind, message = (ByteArray.from_address(handle.value + _OBJECT_HEADER + i * ctypes.sizeof(ByteArray))
                         for i in range(2))
        text = lambda b: ctypes.string_at(b.data, b.size).decode(errors="replace")  # noqa: E731
        raise TVMError(f"{what}: {text(kind)}: {text(message)}")
    finally:
        _lib.TVMFFIObjectDecRef(handle)


class Object:
    """An owned reference to an FFI object (released when this wrapper is collected)."""

    __slots__ = ("handle", "type_index", "__weakref__")

    def __init__(self, handle: int):
        self.handle = handle
        self.type_index = ctypes.c_int32.from_address(handle + 8).value

    def __del__(self):
        if _lib is not None and self.handle:
            _lib.TVMFFIObjectDecRef(self.handle)
            self.handle = 0

    # -- tensors
    def dltensor(self) -> DLTensor:
        return DLTensor.from_address(self.handle + _OBJECT_HEADER)

    @property
    def shape(self) -> tuple[int, ...]:
        t = self.dltensor()
        return tuple(t.shape[i] for i in range(t.ndim))

    @property
    def dtype(self) -> str:
        return dtype_name(self.dltensor().dtype)

    @property
    def nbytes(self) -> int:
        t = self.dltensor()
        return math.prod(self.shape) * ((t.dtype.bits * t.dtype.lanes + 7) // 8)

    # -- arrays
    def items(self) -> list:
        data, size = ctypes.c_void_p.from_address(self.handle + _OBJECT_HEADER).value, \
            ctypes.c_int64.from_address(self.handle + _OBJECT_HEADER + 8).value
        out = []
        for i in range(size):
            any_ = Any.from_address(data + i * ctypes.sizeof(Any))
            if any_.type_index >= STATIC_OBJECT_BEGIN:
                _lib.TVMFFIObjectIncRef(any_.v.v_ptr)
            out.append(_from_any(any_))
        return out


class Function(Object):
    __slots__ = ()

    def __call__(self, *args):
        packed, _keep = _pack(args)  # _keep: encoded strings, alive until the call returns
        return self.call_packed(packed, len(args))

    def call_packed(self, packed, count: int):
        """Call with arguments already in an Any array (e.g. hundreds of weight tensors
        packed once, copied per call)."""
        result = Any()
        if _lib.TVMFFIFunctionCall(self.handle, packed, count, ctypes.byref(result)) != 0:
            _raise_last("call")
        return _from_any(result)


def _pack(values) -> tuple:
    """(Any array over `values`, Python objects it points into)."""
    packed = (Any * max(1, len(values)))()
    keep: list = []
    for slot, value in zip(packed, values):
        _to_any(value, slot, keep)
    return packed, keep


def pack_args(values: list):
    """An Any array over `values` (which must outlive every use of it)."""
    packed, keep = _pack(values)
    if keep:
        raise TypeError("pack_args takes tensors and numbers only")
    return packed


def address(buffer) -> int:
    """Address of a writable buffer's first byte (bytearray, mmap, C-contiguous memoryview)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def _to_any(value, slot: Any, keep: list) -> None:
    if value is None:
        slot.type_index = NONE
    elif isinstance(value, bool):
        slot.type_index, slot.v.v_int64 = BOOL, int(value)
    elif isinstance(value, int):
        slot.type_index, slot.v.v_int64 = INT, value
    elif isinstance(value, float):
        slot.type_index, slot.v.v_float64 = FLOAT, value
    elif isinstance(value, str):
        raw = ctypes.c_char_p(value.encode())
        keep.append(raw)
        slot.type_index, slot.v.v_ptr = RAW_STR, ctypes.cast(raw, ctypes.c_void_p).value
    elif isinstance(value, Object):
        slot.type_index, slot.v.v_ptr = value.type_index, value.handle
    elif isinstance(value, ctypes.c_void_p):
        slot.type_index, slot.v.v_ptr = OPAQUE_PTR, value.value
    elif isinstance(value, DLDevice):
        slot.type_index = DEVICE
        ctypes.memmove(ctypes.addressof(slot.v), ctypes.addressof(value), ctypes.sizeof(DLDevice))
    elif isinstance(value, DLDataType):
        slot.type_index = DATA_TYPE
        ctypes.memmove(ctypes.addressof(slot.v), ctypes.addressof(value), ctypes.sizeof(DLDataType))
    else:
        raise TypeError(f"cannot pass {type(value).__name__} to a TVM function")


def _from_any(result: Any):
    """An owned Any -> Python (objects keep the reference the callee gave us)."""
    ti = result.type_index
    if ti == NONE:
        return None
    if ti in (INT, BOOL):
        return bool(result.v.v_int64) if ti == BOOL else result.v.v_int64
    if ti == FLOAT:
        return result.v.v_float64
    if ti == SMALL_STR:
        return bytes(result.v.v_bytes[:result.zero_padding]).decode()
    if ti >= STATIC_OBJECT_BEGIN:
        if ti == STR:
            obj = Object(result.v.v_ptr)
            b = ByteArray.from_address(obj.handle + _OBJECT_HEADER)
            return ctypes.string_at(b.data, b.size).decode()
        return (Function if ti == FUNCTION else Object)(result.v.v_ptr)
    raise TVMError(f"unexpected FFI result type index {ti}")


def get_global(name: str) -> Function:
    raw = name.encode()
    handle = ctypes.c_void_p()
    arr = ByteArray(ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p), len(raw))
    if _lib.TVMFFIFunctionGetGlobal(ctypes.byref(arr), ctypes.byref(handle)) != 0:
        _raise_last(f"looking up {name}")
    if not handle.value:
        raise TVMError(f"TVM global function {name} is not registered (wrong libtvm_runtime.so?)")
    return Function(handle.value)


_NO_DELETER = _DELETER()
# DLPack structs of zero-copy tensors. A tensor's destructor reads its struct whenever the
# last reference goes, which may be after every Python wrapper is gone: never freed (a
# few hundred bytes per weight, once per loaded model).
_PINNED: list = []


class View(Object):
    """A tensor over memory owned by `owner` (kept alive as long as this wrapper is)."""

    __slots__ = ("owner",)


def tensor_view(ptr: int, shape, dtype: str, device: DLDevice, owner) -> View:
    """A tensor over `owner`'s memory at `ptr`, no copy."""
    shape_arr = (ctypes.c_int64 * max(1, len(shape)))(*shape)
    managed = DLManagedTensor()
    managed.dl_tensor = DLTensor(ptr, device, len(shape), dtype_of(dtype), shape_arr, None, 0)
    managed.deleter = _NO_DELETER
    _PINNED.append((shape_arr, managed))
    handle = ctypes.c_void_p()
    # require_alignment=64: TVM's kernels assume it (a 16-byte aligned input segfaulted one).
    if _lib.TVMFFITensorFromDLPack(ctypes.byref(managed), 64, 1, ctypes.byref(handle)) != 0:
        _raise_last("wrapping a buffer as a tensor")
    view = View(handle.value)
    view.owner = owner
    return view
