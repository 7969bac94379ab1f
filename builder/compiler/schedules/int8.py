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

PANEL = 16  # output columns per weight panel (one 64-byte vector of 16 x 4 bytes)
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
    from tvm.target import codegen

    def has(feature):
        try:
            return bool(codegen.target_has_features(feature, tvm_target))
        except Exception:
            return False

    triple = str(tvm_target.attrs.get("mtriple", ""))
    if triple.startswith("aarch64"):
        return KINDS["sdot"] if has("dotprod") else KINDS["generic"]
    if has("avx512vnni") and has("avx512bw"):
        return KINDS["vnni"]
    if has("avx2"):
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


def eligible(k: int, n: int) -> bool:
    return k % STEP == 0 and n % PANEL == 0 and k >= 16


# op_pattern 8 (kOpaque): FuseOps leaves the kernels alone, and AnnotateTIROpPattern, which
# expects a root block, does not read them. tir.is_scheduled: dlight skips them.
_ATTRS = {"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8}


def _i64(v):
    from tvm import tirx

    return tirx.const(v, "int64")


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
            T.func_name(f"q8_quantize_rows_{k}")
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
    [N], column sums [N][, bias [N]]) -> float32 [m, N]. Tiles of `rows` x (vectors x lanes) outputs, in
    parallel; the last rows of a partial tile read the matrix's last row again (no padding
    pass) and are not stored."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    k4, panels = k // STEP, n // PANEL
    lanes, rows = kind.lanes, kind.rows
    width = kind.vectors * lanes  # columns per tile
    if width % PANEL and PANEL % width:
        raise ValueError(f"int8 tile of {width} columns does not read {PANEL}-column panels")
    vectors = kind.vectors
    while n % (vectors * lanes):
        vectors -= 1
    width = vectors * lanes
    tiles_n = n // width
    vbytes = lanes * STEP  # bytes of weights per vector: 16 x 4 (zmm), 8 x 4 (ymm), 4 x 4 (q)
    i32v, i8v = f"int32x{lanes}", f"int8x{vbytes}"

    def weight_offset(col0, kk):
        # column col0 (a multiple of lanes) of panel col0 // 16, step kk
        panel, within = col0 // PANEL, col0 % PANEL
        return (panel * k4 + kk) * (PANEL * STEP) + within * STEP

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

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"q8_matmul_{k}x{n}" + ("_bias" if bias else ""))
            T.func_attr(_ATTRS)
            m = tirx.Var("m", "int64")
            xq = T.match_buffer(T.arg("xq", T.handle()), (m, k4), "int32")
            xp = T.match_buffer(T.arg("xp", T.handle()), (m, 2), "float32")
            w = T.match_buffer(T.arg("w", T.handle()), (panels * k4 * PANEL * STEP,), "int8")
            ws = T.match_buffer(T.arg("ws", T.handle()), (n,), "float32")
            wc = T.match_buffer(T.arg("wc", T.handle()), (n,), "int32")
            b = T.match_buffer(T.arg("b", T.handle()), (n,), "float32") if bias else None
            y = T.match_buffer(T.arg("y", T.handle()), (m, n), "float32")
            tiles_m = (m + rows - 1) // rows
            with T.sblock("root"), T.parallel(_i64(0), _i64(tiles_n) * tiles_m) as t:
                # column tiles outside row tiles: a thread's consecutive tiles share a weight panel
                jt, it = t // tiles_m, t % tiles_m
                # One buffer per row, in global scope: TVM 0.27 turns "local" allocations in a
                # parallel body into heap workspaces, whose loads and stores LLVM keeps; these
                # become allocas it promotes to registers.
                size = lanes * partials
                accs = [T.alloc_buffer((width * partials,), "int32", scope="global") for _ in range(rows)]
                for acc in accs:
                    for v in range(vectors):
                        T.buffer_store(acc, tirx.Broadcast(tirx.const(0, "int32"), size),
                                       [tirx.Ramp(v * size, 1, size)])
                with T.serial(_i64(0), _i64(k4)) as kk:
                    wvs = [w.vload([weight_offset(jt * width + v * lanes, kk)], i8v) for v in range(vectors)]
                    for r, acc in enumerate(accs):
                        word = xq[tirx.min(it * rows + r, m - 1), kk]
                        for v in range(vectors):
                            cur = acc.vload([v * size], acc_t)
                            T.buffer_store(acc, step(cur, word, wvs[v]), [tirx.Ramp(v * size, 1, size)])
                for r, acc in enumerate(accs):
                    row = it * rows + r
                    with T.If(row < m):
                        with T.Then():
                            _epilogue(T, tirx, acc, xp, ws, wc, b, y, row, jt * width, vectors, lanes, partials)
    return ib.get()


def _epilogue(T, tirx, acc, xp, ws, wc, b, y, row, col0, vectors, lanes, partials):
    """A tile row's outputs: (s_row * acc + c_row * colsum) * s_col (+ bias), a vector at a
    time (the generic kernel's partial sums added first, column by column)."""
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
    [..., K] and W a constant float32 [K, N] -> reshape, quantize_rows, q8_matmul, reshape.
    A row set quantized once serves every matmul reading it (BERT's Q, K and V)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EdgebundleQuantizeDense")
    def _pass(mod, _ctx):
        from .gemm import op_rewrite_pass

        return op_rewrite_pass("EdgebundleQuantizeDenseCalls", _rewriter(kind))(mod)

    return _pass


def _rewriter(kind: Kind):
    """The call rewrite of quantize_dense, with this module's functions and quantized rows.
    Rows are reused by var, which holds within one dataflow block: the torch frontend writes
    one per function."""
    import tvm_ffi
    from tvm import relax

    from .cpu import _const_int
    from .storage import big_const, plain_take

    funcs: dict = {}
    rows_of: dict = {}
    made: dict = {}  # var of a q8_matmul call -> (its arguments, k, n)

    def func(bb, name, make):
        if name not in funcs:
            funcs[name] = bb.add_func(make(), name)
        return funcs[name]

    def product(bb, expr):
        """The q8_matmul call var behind expr, through reshapes and aliases, else None."""
        for _ in range(4):
            if not isinstance(expr, relax.Var):
                return None
            if expr in made:
                return expr
            value = bb.lookup_binding(expr)
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.reshape":
                value = value.args[0]
            expr = value
        return None

    def add_bias(bb, call):
        """add(q8 product, bias [N]) -> one q8_matmul that adds the bias in its epilogue (the
        product's own call is then dead and goes; a Linear's product has no other use)."""
        for a, c in (call.args, call.args[::-1]):
            var = product(bb, a)
            if var is None or type(c).__name__ != "GenericConst" or not hasattr(c.value, "shape"):
                continue
            args, k, n = made[var]
            # a bias along the product's columns, the sum shaped as the product (no broadcast)
            if (str(c.ty.dtype) != "float32" or [int(d) for d in c.value.shape] != [n]
                    or not isinstance(a.ty, relax.TensorType) or not isinstance(call.ty, relax.TensorType)
                    or not tvm_ffi.structural_equal(a.ty.shape, call.ty.shape)):
                continue
            gm = func(bb, f"q8_matmul_{k}x{n}_bias", lambda: matmul_func(kind, k, n, bias=True))
            y = bb.emit(relax.call_tir(gm, [*args, c], out_ty=relax.TensorType((args[0].ty.shape.values[0], n),
                                                                                   "float32")))
            return relax.op.reshape(y, call.ty.shape) if call.ty.ndim != 2 else y
        return None

    def rewrite(bb, call):
        if call.op.name == "relax.take" and plain_take(call):
            return _take(bb, call)
        if call.op.name == "relax.add" and len(call.args) == 2 and made:
            return add_bias(bb, call)
        if call.op.name != "relax.matmul" or len(call.args) != 2:
            return None
        w = big_const(call.args[1])
        x = call.args[0]
        xt = x.ty
        if (w is None or w.ndim != 2 or not eligible(*w.shape) or not isinstance(xt, relax.TensorType)
                or str(xt.dtype) != "float32" or xt.ndim < 1 or not isinstance(xt.shape, relax.ShapeExpr)):
            return None
        k, n = (int(d) for d in w.shape)
        lead = list(xt.shape.values[:-1])
        m = 1
        for d in lead:
            m = m * d
        flat = (m, k)
        # rows are rows however they were flattened: torch.export writes a reshape to 2-D
        # before each Linear on a 3-D input, one per Linear, all of the same tensor
        key = (x, k)
        source = bb.lookup_binding(x) if isinstance(x, relax.Var) else None
        if (isinstance(source, relax.Call) and getattr(source.op, "name", "") == "relax.reshape"
                and isinstance(source.args[0].ty, relax.TensorType) and source.args[0].ty.shape is not None
                and _const_int(source.args[0].ty.shape.values[-1]) == k):
            key = (source.args[0], k)
        if key not in rows_of:
            x2 = bb.emit(relax.op.reshape(x, flat)) if len(lead) != 1 else x
            gq = func(bb, f"q8_quantize_rows_{k}", lambda: quantize_rows_func(kind, k))
            q = bb.emit(relax.call_tir(gq, [x2], out_ty=[relax.TensorType((m, k // STEP), "int32"),
                                                          relax.TensorType((m, 2), "float32")]))
            rows_of[key] = (bb.emit(relax.TupleGetItem(q, 0)), bb.emit(relax.TupleGetItem(q, 1)))
        xq, xp = rows_of[key]
        packed, scale, sums = quantize_weight(w)
        gm = func(bb, f"q8_matmul_{k}x{n}", lambda: matmul_func(kind, k, n))
        args = [xq, xp, relax.const(packed), relax.const(scale), relax.const(sums)]
        y = bb.emit(relax.call_tir(gm, args, out_ty=relax.TensorType((m, n), "float32")))
        made[y] = (args, k, n)
        return y if len(lead) == 1 else relax.op.reshape(y, (*lead, n))

    return rewrite
