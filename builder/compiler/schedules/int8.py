"""int8 dense layers (`build --quantize int8`).

A matmul with a constant weight W [K, N] becomes, on every CPU target:
- weights, at build: per output column symmetric int8 (scale max|W[:, n]| / 127), packed
  [N/16, K/4, 16, 4] (16 columns x 4 reduction steps = 64 bytes, the operand of one
  vpdpbusd), with the column sums of the int8 values (for the activations' offset);
- activations, per call: per row (token) asymmetric quantization over the row's own range
  (quantize_rows_func), four bytes packed in an int32 so a row's four reduction steps are
  one broadcast; quantized once for every matmul reading the same rows (Q, K and V);
- the product: int32 accumulators in registers, then per row and column
  y = (s_row * acc + c_row * colsum) * s_col.
A bias added to the product is added in the kernel's epilogue (the dequantization); GELU
and the residual stay Relax ops. The activations' quantization is a kernel of its own, one
pass over rows the producer (LayerNorm, GELU) just wrote: BERT-base seq 128, 0.7 ms of 21
(Zen 5).

The kernels are written loop by loop (TIR through the IR builder), not scheduled: TVM 0.27's
tensorize segfaults, and LLVM never forms vpdpbusd from a plain int8 multiply-reduce. Their
inner step, by what the variant's TVM target has (`kernel_kind`):
- vnni (AVX-512 VNNI): vpdpbusd, u8 activations (256 levels) x s8 weights;
- avx2: vpmaddubsw + vpmaddwd, u8 x s8 whose pair sums are int16 and saturate above 32767:
  activations get 7 bits (128 levels: 2 x 127 x 127 = 32258), weights keep 8, so every
  variant reads the same weights file;
- sdot (Armv8.2 dot product, Graviton2 / Neoverse N1): s8 x s8, activations 256 levels
  stored less 128;
- generic: the same arithmetic in plain int32 (any other --cpu).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .dot import ATTRS as _ATTRS
from .dot import PANEL, Kernel, Scheme, Tile, dense_pass, i64 as _i64, is_aarch64, target_has, tiled_matmul

STEP = 4  # reduction steps per packed int32
# Validation against PyTorch fp32 (|ours - torch| <= atol + rtol * max|torch|): the rtol of
# int8 builds. Quantizing both operands moves tiny random BERTs' outputs by 1-3% of the
# largest one, all-MiniLM-L6-v2's normalised embeddings by up to 0.023 where the largest
# element is ~0.2 (AVX2's 7-bit activations, 11%); the accuracy gate
# (builder/validate/accuracy.py) is the real check, this one catches a broken kernel.
TOLERANCE = 0.15


@dataclasses.dataclass(frozen=True)
class Kind:
    """An int8 kernel's arithmetic: the activations' largest level (they are 0..levels,
    stored as the byte level - offset: signed for sdot), (rows, vectors) of the register
    tile, int32 lanes per vector."""

    name: str
    levels: int
    offset: int
    rows: int
    vectors: int
    lanes: int


KINDS = {
    # u8 x s8. 8 rows x 3 zmm = 24 accumulators of 32 registers; 128x768x768 in 0.17 ms vs
    # 0.63 for our fp32 AVX-512 kernel (2 threads, Zen 5).
    "vnni": Kind("vnni", 255, 0, 8, 3, 16),
    # u7 x s8: vpmaddubsw's pair sums saturate at 32767, 2 x 127 x 127 = 32258 does not.
    # 4 rows x 2 ymm = 8 accumulators, two weight vectors, a broadcast, the ones and a
    # product of 16 registers (4x2 0.65 ms, 5x2 0.65, 6x2 0.67-0.74 on 128x768x768; our fp32
    # AVX2 kernel 1.23).
    "avx2": Kind("avx2", 127, 0, 4, 2, 8),
    # s8 x s8 (levels 0..255 less 128). 6 rows x 4 q-registers = 24 accumulators of 32.
    "sdot": Kind("sdot", 255, 128, 6, 4, 4),
    # 2 rows x 2 x (4 columns x 4 partial sums): 16 int32x4 registers on NEON.
    "generic": Kind("generic", 255, 128, 2, 2, 4),
}


def kernel_kind(tvm_target) -> Kind:
    """The int8 kernel a TVM target can run."""
    if is_aarch64(tvm_target):
        return KINDS["sdot"] if target_has(tvm_target, "dotprod") else KINDS["generic"]
    if target_has(tvm_target, "avx512vnni") and target_has(tvm_target, "avx512bw"):
        return KINDS["vnni"]
    if target_has(tvm_target, "avx2"):
        return KINDS["avx2"]
    return KINDS["generic"]


def _symmetric(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 q, float32 scale per slice along `axis`): q = round(w / s), s = max|w| / 127
    over the slice (1 for an all-zero slice)."""
    top = np.abs(w).max(axis=axis, keepdims=True).astype(np.float32)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale.reshape(-1)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [K, N] float32 -> (packed int8 [N/16 * K/4 * 64], scale float32 [N], column sums
    int32 [N]). Symmetric per output column: q = round(W / s), s = max|W[:, n]| / 127."""
    k, n = w.shape
    q, scale = _symmetric(w, axis=0)
    packed = q.reshape(k // STEP, STEP, n // PANEL, PANEL).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(packed).reshape(-1), scale, q.astype(np.int32).sum(axis=0).astype(np.int32)


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An embedding table [V, D] float32 -> (int8 [V, D], scale float32 [V]), symmetric per
    row: a token's vector is what is read, so each gets its own scale."""
    return _symmetric(table, axis=1)


def _take(bb, call):
    """take(table, ids) of a large constant table: an int8 table and its row scales. The
    embeddings are most of a small model's file (all-MiniLM-L6-v2: 11.7 M of 22.7 M
    parameters)."""
    from tvm import relax

    from .storage import INJECTIVE, big_const, take_te, with_pattern

    table = big_const(call.args[0])
    ids = call.args[1].ty
    if (table is None or table.ndim != 2 or not isinstance(ids, relax.TensorType)
            or not str(ids.dtype).startswith(("int", "uint"))):
        return None
    q, scale = quantize_rows(table)
    return with_pattern(bb, bb.call_te(take_te, relax.const(q), call.args[1], relax.const(scale),
                                       primfunc_name_hint="take"), INJECTIVE)


def manifest_record(arrays) -> dict:
    """What model.json says of an int8 build's weights (the writer's distinct arrays)."""
    packed = [a for a in arrays if a.dtype == np.int8]
    return {"scheme": "int8", "tensors": len(packed), "int8_bytes": int(sum(a.nbytes for a in packed)),
            "dense_layers": sum(a.ndim == 1 for a in packed), "embedding_tables": sum(a.ndim == 2 for a in packed),
            "weights": f"dense: symmetric per output column, int8 [-127, 127], packed [N/{PANEL}, K/{STEP}, {PANEL}, "
                       f"{STEP}]; embeddings: symmetric per row",
            "activations": "asymmetric per row (token), over the row's range, quantized at run time",
            "accumulation": "int32",
            "covers": f"matmuls with a constant weight of at least 4096 elements, K a multiple of {STEP}, N of "
                      f"{PANEL}; take() of a constant table along its rows"}


def quantize_rows_func(kind: Kind, k: int):
    """x float32 [m, K] -> (packed quantized rows int32 [m, K/4], row parameters float32
    [m, 2]). Asymmetric per row: u = round((x - min) / s) in [0, levels], s = (max - min) /
    levels, stored as the byte u - offset; (s, s * offset + min) are the row's parameters,
    so that sum_k x w ~ s * sum_k byte w + (s * offset + min) * sum_k w. A row's range is
    used whole: GELU outputs (FFN inputs) are almost all >= -0.17, and a symmetric scale
    would spend half the levels on values that never occur (all-MiniLM-L6-v2, AVX2's 7
    bits: worst cosine over the accuracy set 0.9879 symmetric, 0.9925 asymmetric; VNNI's 8
    bits 0.9927 and 0.9969)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    k4 = k // STEP
    levels = float(kind.levels)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"q8_rows_{k}")
            T.func_attr(_ATTRS)
            m = tirx.Var("m", "int64")
            x = T.match_buffer(T.arg("x", T.handle()), (m, k), "float32")
            xq = T.match_buffer(T.arg("xq", T.handle()), (m, k4), "int32")
            xp = T.match_buffer(T.arg("xp", T.handle()), (m, 2), "float32")
            with T.sblock("root"), T.parallel(_i64(0), m) as r:
                # two-element buffer: TIR has no mutable scalars (global scope: in a parallel
                # body TVM 0.27 puts "local" allocations on the heap, one malloc per row)
                ext = T.alloc_buffer((2,), "float32", scope="global")
                T.buffer_store(ext, x[r, 0], [0])
                T.buffer_store(ext, x[r, 0], [1])
                with T.serial(_i64(0), _i64(k)) as c:
                    T.buffer_store(ext, tirx.min(ext[0], x[r, c]), [0])
                    T.buffer_store(ext, tirx.max(ext[1], x[r, c]), [1])
                lo, span = ext[0], ext[1] - ext[0]
                scale = tirx.Select(span > 0, span / levels, tirx.const(1.0, "float32"))
                T.buffer_store(xp, scale, [r, 0])
                T.buffer_store(xp, scale * float(kind.offset) + lo, [r, 1])
                inv = tirx.Select(span > 0, levels / span, tirx.const(0.0, "float32"))
                with T.serial(_i64(0), _i64(k4)) as c:
                    word = tirx.const(0, "int32")
                    for t in range(STEP):
                        u = tirx.nearbyint((x[r, c * STEP + t] - lo) * inv)
                        u = tirx.max(tirx.min(u, levels), 0.0)
                        byte = (u.astype("int32") - kind.offset) & 255
                        word = word | (byte << (8 * t))
                    T.buffer_store(xq, word, [r, c])
    return ib.get()


def matmul_func(kind: Kind, k: int, n: int, bias: bool = False):
    """(packed rows int32 [m, K/4], row parameters [m, 2], packed weights, column scales
    [N], column sums [N][, bias [N]]) -> float32 [m, N] (schedules/dot.py's loop nest)."""
    from tvm import tirx

    lanes = kind.lanes
    i32v, i8v = f"int32x{lanes}", f"int8x{lanes * STEP}"
    # generic: 4 partial sums per column (lanes c*4 + t), summed in the epilogue: plain
    # widening multiply-adds LLVM vectorises anywhere (NEON smlal, SSE/AVX pmulld).
    partials = STEP if kind.name == "generic" else 1
    acc_t = f"int32x{lanes * partials}"

    def step(acc, word, wv):
        xa = tirx.reinterpret(i8v, tirx.Broadcast(word, lanes))  # the row's 4 bytes, once per column
        if kind.name == "vnni":
            return tirx.call_llvm_pure_intrin(i32v, "llvm.x86.avx512.vpdpbusd.512", acc, xa, wv)
        if kind.name == "avx2":
            pairs = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", xa, wv)
            ones = tirx.Broadcast(tirx.const(1, "int16"), 16)
            return acc + tirx.call_llvm_pure_intrin(i32v, "llvm.x86.avx2.pmadd.wd", pairs, ones)
        if kind.name == "sdot":
            return tirx.call_llvm_pure_intrin(i32v, "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, wv, xa)
        return acc + xa.astype(acc_t) * wv.astype(acc_t)

    def epilogue(T, bufs, acc, row, col0, vectors):
        _epilogue(T, tirx, acc, bufs, row, col0, vectors, lanes, partials)

    col = lambda m: (n,)  # noqa: E731
    inputs = (("xp", lambda m: (m, 2), "float32"), ("w", lambda m: (n // PANEL * (k // STEP) * PANEL * STEP,), "int8"),
              ("ws", col, "float32"), ("wc", col, "int32"), *((("b", col, "float32"),) if bias else ()))
    kernel = Kernel(f"q8_matmul_{k}x{n}" + ("_bias" if bias else ""), "int32", inputs,
                    lambda w, word: w.vload([word * STEP], i8v), step, epilogue)
    return tiled_matmul(kernel, Tile(kind.rows, kind.vectors, lanes, partials), k // STEP, n)


def _epilogue(T, tirx, acc, bufs, row, col0, vectors, lanes, partials):
    """A tile row's outputs: (s_row * acc + c_row * colsum) * s_col (+ bias), a vector at a
    time (the generic kernel's partial sums added first, column by column)."""
    xp, ws, wc, b, y = bufs["xp"], bufs["ws"], bufs["wc"], bufs.get("b"), bufs["y"]
    if partials == 1:
        f32, i32v = f"float32x{lanes}", f"int32x{lanes}"
        for v in range(vectors):
            col = col0 + v * lanes
            total = acc.vload([v * lanes], i32v).astype(f32)
            sums = wc.vload([col], i32v).astype(f32)
            out = (total * tirx.Broadcast(xp[row, 0], lanes) + sums * tirx.Broadcast(xp[row, 1], lanes)) \
                * ws.vload([col], f32)
            if b is not None:
                out = out + b.vload([col], f32)
            T.buffer_store(y, out, [row, tirx.Ramp(col, 1, lanes)])
        return
    for c in range(vectors * lanes):
        total = acc[c * partials]
        for t in range(1, partials):
            total = total + acc[c * partials + t]
        out = (total.astype("float32") * xp[row, 0] + wc[col0 + c].astype("float32") * xp[row, 1]) * ws[col0 + c]
        if b is not None:
            out = out + b[col0 + c]
        T.buffer_store(y, out, [row, col0 + c])


def quantize_dense(kind: Kind):
    """Relax pass (before legalization, before store_weights): matmul(x, W) with x float32
    [..., K] and W a constant float32 [K, N] -> reshape, quantize_rows, q8_matmul, reshape
    (schedules/dot.py); take() of a large table -> an int8 table."""
    from tvm import relax

    scheme = Scheme("q8", lambda k: quantize_rows_func(kind, k),
                    lambda m, k: [relax.TensorType((m, k // STEP), "int32"), relax.TensorType((m, 2), "float32")],
                    lambda k, n, epi: matmul_func(kind, k, n, epi.bias), quantize_weight, STEP, _take)
    return dense_pass(scheme, "EdgebundleQuantizeDense")
