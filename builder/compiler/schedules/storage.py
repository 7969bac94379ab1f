"""Weights stored narrower than they compute (`build --weights fp16|bf16`).

A GEMM weight is stored as float16 or bfloat16 and widened to float32 where a kernel loads
it: the compute stays fp32, the weights file and the bytes each inference streams from
memory halve, and no fp32 copy is ever made (not at build, not at load). The widening is in
the kernel's inner loop, after the weight panel's load: F16C `vcvtph2ps` for float16 on
x86_64 (every x86-64-v3 CPU has it), a zero-extend and a 16-bit shift for bfloat16, which
is the upper half of a float32 (numpy has no bfloat16, so its bits are kept as uint16).

- `narrow(array, storage)`: the build-time conversion (round to nearest even).
- `widen(value)`: a TE/TIR load of a stored weight as float32, by the buffer's dtype; the
  Winograd and packed-conv computes call it on their weights too.
- `store_weights(storage)`: a Relax pass giving the remaining weight readers (matmul with a
  constant right operand, direct NHWC convs, embedding lookups) computes that read the
  narrow constant: FuseOps never fuses a cast into a matmul's operand, and FoldConstant
  would fold `astype(const)` straight back to fp32.
"""
from __future__ import annotations

import numpy as np

from builder.options import STORAGES
# Smaller weights stay float32: biases, norms, shape tables (a few KB of a model).
MIN_ELEMENTS = 4096
FP16_MAX = 65504.0
# Validation against PyTorch fp32 (|ours - torch| <= atol + rtol * max|torch|) when weights
# are stored narrow: ~10x the error of rounding the weights alone, measured on tiny random
# BERT and conv models (fp16 3e-4-5e-4, bf16 2e-3-4e-3 of the largest output).
TOLERANCE = {"fp16": 5e-3, "bf16": 3e-2}


def tolerance(base: dict, storage: str) -> dict:
    """A family's validation tolerance, widened for weights stored as `storage`."""
    bound = TOLERANCE.get(storage, 0.0)
    return {"atol": max(base["atol"], bound), "rtol": max(base["rtol"], bound)}


def narrow(array: np.ndarray, storage: str) -> np.ndarray:
    """float32 weights as stored: float16, or bfloat16 bits as uint16 (rounded to nearest
    even); unchanged for fp32, for other dtypes, for small tensors, and for float16 when a
    value is beyond its range (it would become inf) or the tensor's scale is so small that
    its values lose more than fp16's relative precision (subnormals)."""
    if storage == "fp32" or array.dtype != np.float32 or array.size < MIN_ELEMENTS:
        return array
    if storage == "fp16":
        top = float(np.abs(array).max())
        if top > FP16_MAX:
            return array
        half = array.astype(np.float16)
        if float(np.abs(half.astype(np.float32) - array).max()) > top * 2.0 ** -10:
            return array
        return half
    if storage == "bf16":
        return bf16_bits(array)
    raise ValueError(f"unknown weight storage {storage!r} (one of {', '.join(STORAGES)})")


def bf16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits as uint16, rounded to nearest even (numpy has no bfloat16)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def widen(value):
    """A loaded weight element as float32 (a TE expression or TIR value)."""
    from tvm import tirx

    dtype = str(value.dtype)
    if dtype == "float16":
        return value.astype("float32")
    if dtype == "uint16":  # bfloat16 bits
        return tirx.reinterpret("float32", value.astype("uint32") << tirx.const(16, "uint32"))
    return value


def matmul_te(x, w):
    """x [..., K] @ w [K, N], w stored narrow."""
    from tvm import te

    k = te.reduce_axis((0, w.shape[0]), name="k")
    return te.compute((*x.shape[:-1], w.shape[1]),
                      lambda *i: te.sum(x[(*i[:-1], k)] * widen(w[k, i[-1]]), axis=k), name="matmul")


def conv2d_nhwc_te(x, w, strides, padding):
    """NHWC x HWIO (groups 1, dilation 1), w stored narrow; padding (top, left, bottom, right)."""
    from tvm import te, topi

    n, h, wd, _ = x.shape
    kh, kw, ci, co = (int(d) for d in w.shape)
    oh = (int(h) + padding[0] + padding[2] - kh) // strides[0] + 1
    ow = (int(wd) + padding[1] + padding[3] - kw) // strides[1] + 1
    xp = (topi.nn.pad(x, (0, padding[0], padding[1], 0), (0, padding[2], padding[3], 0), name="pad_temp")
          if any(padding) else x)
    ry, rx, rc = (te.reduce_axis((0, e), name=nm) for e, nm in ((kh, "ry"), (kw, "rx"), (ci, "rc")))
    return te.compute((n, oh, ow, co),
                      lambda b, y, xx, c: te.sum(xp[b, y * strides[0] + ry, xx * strides[1] + rx, rc]
                                                 * widen(w[ry, rx, rc, c]), axis=[ry, rx, rc]),
                      name="conv2d_nhwc")


def take_te(table, ids, scales=None):
    """Rows of a narrow [V, D] table (an embedding) as float32: only the rows asked for are
    widened (int8 tables: times their row's scale). Ids out of range are clamped (take's
    "clip" mode)."""
    from tvm import te, tirx

    vocab = table.shape[0]

    def row(*i):
        idx = tirx.max(tirx.min(ids[i[:-1]].astype("int64"), vocab - 1), 0)
        if scales is not None:
            return table[idx, i[-1]].astype("float32") * scales[idx]
        return widen(table[idx, i[-1]])

    return te.compute((*ids.shape, table.shape[1]), row, name="take")


def big_const(expr):
    """The float32 numpy value of a large constant, else None."""
    if type(expr).__name__ != "GenericConst" or not hasattr(expr.value, "shape"):
        return None
    if str(expr.ty.dtype) != "float32":
        return None
    value = expr.value.numpy()
    return value if value.size >= MIN_ELEMENTS else None


# relax.transform.AnnotateTIROpPattern's kinds. It reads a bfloat16 widening (a reinterpret
# call) as injective, and FuseOps then fused BERT's GELU into the next matmul as a producer,
# recomputed per weight tile (150 ms of 228); so the computes here state their kind.
OUT_EWISE_FUSABLE, INJECTIVE = 4, 2


def plain_take(call) -> bool:
    """take along axis 0 in "fast" or "clip" mode: what take_te computes. TVM's default take
    ("fast") reads out-of-range ids unchecked; clamping is what "clip" does and a safe
    "fast". "wrap" and "nan" keep their own legalization."""
    return (call.attrs.axis is not None and int(call.attrs.axis) == 0
            and str(getattr(call.attrs, "mode", "fast")) in ("fast", "clip"))


def with_pattern(bb, call, kind: int):
    gv = call.args[0]
    bb.update_func(gv, bb.get()[gv].with_attr("op_pattern", kind))
    return call


def store_weights(storage: str):
    """Relax pass (after ConvertLayout, FoldConstant and the Winograd / packed-conv rewrites):
    matmul(x, W), conv2d(x, W) and take(W, ids) with a large constant float32 W read W
    stored as `storage` (fp16 or bf16) through the computes above."""
    from tvm import relax

    from .common import op_rewrite_pass, static_conv

    def rewrite(bb, call):
        name = call.op.name
        if name == "relax.matmul" and len(call.args) == 2:
            w = big_const(call.args[1])
            x = call.args[0].ty
            if (w is None or w.ndim != 2 or not isinstance(x, relax.TensorType) or str(x.dtype) != "float32"
                    or x.ndim < 1):
                return None
            narrowed = narrow(w, storage)
            if narrowed is w:
                return None
            return with_pattern(bb, bb.call_te(matmul_te, call.args[0], relax.const(narrowed),
                                                primfunc_name_hint="matmul"), OUT_EWISE_FUSABLE)
        if name == "relax.nn.conv2d":
            info = static_conv(call)
            if info is None:
                return None
            strides, padding, _, w = info
            narrowed = narrow(w, storage)
            if narrowed is w:
                return None
            return with_pattern(bb, bb.call_te(conv2d_nhwc_te, call.args[0], relax.const(narrowed), tuple(strides),
                                                tuple(padding), primfunc_name_hint="conv2d"), OUT_EWISE_FUSABLE)
        if name == "relax.take" and plain_take(call):
            w = big_const(call.args[0])
            ids = call.args[1].ty
            if (w is None or w.ndim != 2 or not isinstance(ids, relax.TensorType)
                    or not str(ids.dtype).startswith(("int", "uint"))):
                return None
            narrowed = narrow(w, storage)
            if narrowed is w:
                return None
            return with_pattern(bb, bb.call_te(take_te, relax.const(narrowed), call.args[1], primfunc_name_hint="take"),
                                 INJECTIVE)
        return None

    return op_rewrite_pass("EdgebundleStoreWeights", rewrite)
