"""int8 dense layers (`build --quantize int8`).

A matmul with a constant weight W [K, N] becomes, on every CPU target:
- weights, at build: per output column symmetric int8 (scale max|W[:, n]| / 127), packed
  [N/16, K/4, 16, 4] (16 columns x 4 reduction steps = 64 bytes, the operand of one
  vpdpbusd), with the column sums of the int8 values (for the activations' zero point);
- activations, per call: per row (token) symmetric quantization to Q levels, plus a zero
  point where the instruction wants unsigned bytes, four bytes packed in an int32 so a
  row's four reduction steps are one broadcast;
- the product: int32 accumulators in registers, then y = (acc - zp * colsum) * sx * sw.
The bias and whatever follows (GELU, residual) stay Relax ops: FuseOps puts them into the
elementwise kernel that follows anyway (bias + GELU, bias + residual + LayerNorm).

The kernels are written loop by loop (TIR through the IR builder), not scheduled: TVM 0.27's
tensorize segfaults, and LLVM never forms vpdpbusd from a plain int8 multiply-reduce. Their
inner step, by what the variant's TVM target has (`kernel_kind`):
- vnni (AVX-512 VNNI): vpdpbusd, u8 activations (Q 127, zero point 128) x s8 weights;
- avx2: vpmaddubsw + vpmaddwd, u8 x s8 whose pair sums are int16 and saturate above 32767:
  activations get 7 bits (Q 63, zero point 64: 2 x 126 x 127 = 32004), weights keep 8, so
  every variant reads the same weights file;
- sdot (Armv8.2 dot product, Graviton2 / Neoverse N1): s8 x s8, Q 127, no zero point;
- generic: the same arithmetic in plain int32 (any other --cpu).
"""
from __future__ import annotations

import dataclasses

import numpy as np

PANEL = 16  # output columns per weight panel (one 64-byte vector of 16 x 4 bytes)
STEP = 4  # reduction steps per packed int32
# Validation against PyTorch fp32 (|ours - torch| <= atol + rtol * max|torch|). Quantizing
# both operands moves tiny random BERTs' outputs by 1-3% of the largest one; the accuracy
# gate (builder/validate/accuracy.py) is the real check.
TOLERANCE = 8e-2


@dataclasses.dataclass(frozen=True)
class Kind:
    """An int8 kernel's arithmetic: levels per sign of the activations, their zero point,
    (rows, vectors) of the register tile, int32 lanes per vector."""

    name: str
    levels: int
    zero: int
    rows: int
    vectors: int
    lanes: int


KINDS = {
    # 8 rows x 3 zmm = 24 accumulators of 32 registers; 128x768x768 in 0.18 ms vs 0.70 fp32
    # (2 threads, Zen 5).
    "vnni": Kind("vnni", 127, 128, 8, 3, 16),
    # 4 rows x 4 ymm (two panels) = 16 ... too many of 16: 4 x 2 ymm = 8 accumulators, two
    # weight vectors, a broadcast, the ones and a product.
    "avx2": Kind("avx2", 63, 64, 4, 2, 8),
    # 6 rows x 4 q-registers (one panel) = 24 accumulators of 32.
    "sdot": Kind("sdot", 127, 0, 6, 4, 4),
    "generic": Kind("generic", 127, 0, 4, 4, 4),
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


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [K, N] float32 -> (packed int8 [N/16 * K/4 * 64], scale float32 [N], column sums
    int32 [N]). Symmetric per output column: q = round(W / s), s = max|W[:, n]| / 127."""
    k, n = w.shape
    top = np.abs(w).max(axis=0).astype(np.float32)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    packed = q.reshape(k // STEP, STEP, n // PANEL, PANEL).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(packed).reshape(-1), scale, q.astype(np.int32).sum(axis=0).astype(np.int32)


def manifest_record(arrays) -> dict:
    """What model.json says of an int8 build's weights (the writer's distinct arrays)."""
    packed = [a for a in arrays if a.dtype == np.int8]
    return {"scheme": "int8", "layers": len(packed), "int8_bytes": int(sum(a.nbytes for a in packed)),
            "weights": f"symmetric per output column, int8 [-127, 127], packed [N/{PANEL}, K/{STEP}, {PANEL}, {STEP}]",
            "activations": "symmetric per row (token), quantized at run time",
            "accumulation": "int32", "covers": "matmuls with a constant weight (dense layers)"}


def eligible(k: int, n: int) -> bool:
    return k % STEP == 0 and n % PANEL == 0 and k >= 16


# op_pattern 8 (kOpaque): FuseOps leaves the kernels alone, and AnnotateTIROpPattern, which
# expects a root block, does not read them. tir.is_scheduled: dlight skips them.
_ATTRS = {"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8}


def _i64(v):
    from tvm import tirx

    return tirx.const(v, "int64")


def quantize_rows_func(kind: Kind, k: int):
    """x float32 [m, K] -> (packed quantized rows int32 [m, K/4], row scales float32 [m])."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    k4 = k // STEP
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"q8_quantize_rows_{k}")
            T.func_attr(_ATTRS)
            m = tirx.Var("m", "int64")
            x = T.match_buffer(T.arg("x", T.handle()), (m, k), "float32")
            xq = T.match_buffer(T.arg("xq", T.handle()), (m, k4), "int32")
            xs = T.match_buffer(T.arg("xs", T.handle()), (m,), "float32")
            with T.sblock("root"), T.parallel(_i64(0), m) as r:
                # a one-element buffer: TIR has no mutable scalars (global scope: in a parallel
                # body TVM 0.27 puts "local" allocations on the heap, one malloc per row)
                top = T.alloc_buffer((1,), "float32", scope="global")
                T.buffer_store(top, tirx.const(0.0, "float32"), [0])
                with T.serial(_i64(0), _i64(k)) as c:
                    T.buffer_store(top, tirx.max(top[0], tirx.abs(x[r, c])), [0])
                T.buffer_store(xs, tirx.Select(top[0] > 0, top[0] / float(kind.levels), tirx.const(1.0, "float32")),
                               [r])
                inv = tirx.Select(top[0] > 0, float(kind.levels) / top[0], tirx.const(0.0, "float32"))
                with T.serial(_i64(0), _i64(k4)) as c:
                    word = tirx.const(0, "int32")
                    for t in range(STEP):
                        q = tirx.nearbyint(x[r, c * STEP + t] * inv)
                        q = tirx.max(tirx.min(q, float(kind.levels)), -float(kind.levels))
                        byte = (q.astype("int32") + kind.zero) & 255
                        word = word | (byte << (8 * t))
                    T.buffer_store(xq, word, [r, c])
    return ib.get()


def matmul_func(kind: Kind, k: int, n: int):
    """(packed rows int32 [m, K/4], row scales [m], packed weights, column scales [N],
    column sums [N]) -> float32 [m, N]. Tiles of `rows` x (vectors x lanes) outputs, in
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

    def step(acc, xa, wv):
        if kind.name == "vnni":
            return tirx.call_llvm_pure_intrin(i32v, "llvm.x86.avx512.vpdpbusd.512", acc, xa, wv)
        if kind.name == "avx2":
            pairs = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", xa, wv)
            ones = tirx.Broadcast(tirx.const(1, "int16"), 16)
            return acc + tirx.call_llvm_pure_intrin(i32v, "llvm.x86.avx2.pmadd.wd", pairs, ones)
        if kind.name == "sdot":
            return tirx.call_llvm_pure_intrin(i32v, "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, wv, xa)
        raise AssertionError(kind.name)

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"q8_matmul_{k}x{n}")
            T.func_attr(_ATTRS)
            m = tirx.Var("m", "int64")
            xq = T.match_buffer(T.arg("xq", T.handle()), (m, k4), "int32")
            xs = T.match_buffer(T.arg("xs", T.handle()), (m,), "float32")
            w = T.match_buffer(T.arg("w", T.handle()), (panels * k4 * PANEL * STEP,), "int8")
            ws = T.match_buffer(T.arg("ws", T.handle()), (n,), "float32")
            wc = T.match_buffer(T.arg("wc", T.handle()), (n,), "int32")
            y = T.match_buffer(T.arg("y", T.handle()), (m, n), "float32")
            tiles_m = (m + rows - 1) // rows
            with T.sblock("root"), T.parallel(_i64(0), _i64(tiles_n) * tiles_m) as t:
                # column tiles outside row tiles: a thread's consecutive tiles share a weight panel
                jt, it = t // tiles_m, t % tiles_m
                # One buffer per row, in global scope: TVM 0.27 turns "local" allocations in a
                # parallel body into heap workspaces, whose loads and stores LLVM keeps; these
                # become allocas it promotes to registers.
                accs = [T.alloc_buffer((width,), "int32", scope="global") for _ in range(rows)]
                for acc in accs:
                    for v in range(vectors):
                        T.buffer_store(acc, tirx.Broadcast(tirx.const(0, "int32"), lanes),
                                       [tirx.Ramp(v * lanes, 1, lanes)])
                with T.serial(_i64(0), _i64(k4)) as kk:
                    if kind.name == "generic":
                        _generic_step(T, tirx, accs, xq, w, m, it, jt, kk, rows, width, weight_offset)
                    else:
                        wvs = [w.vload([weight_offset(jt * width + v * lanes, kk)], i8v) for v in range(vectors)]
                        for r, acc in enumerate(accs):
                            row = tirx.min(it * rows + r, m - 1)
                            xa = tirx.reinterpret(i8v, tirx.Broadcast(xq[row, kk], lanes))
                            for v in range(vectors):
                                cur = acc.vload([v * lanes], i32v)
                                T.buffer_store(acc, step(cur, xa, wvs[v]), [tirx.Ramp(v * lanes, 1, lanes)])
                for r, acc in enumerate(accs):
                    row = it * rows + r
                    with T.If(row < m):
                        with T.Then():
                            for v in range(vectors):
                                col = jt * width + v * lanes
                                total = acc.vload([v * lanes], i32v)
                                if kind.zero:
                                    total = total - wc.vload([col], i32v) * tirx.const(kind.zero, "int32")
                                out = (total.astype(f"float32x{lanes}") * tirx.Broadcast(xs[row], lanes)
                                       * ws.vload([col], f"float32x{lanes}"))
                                T.buffer_store(y, out, [row, tirx.Ramp(col, 1, lanes)])
    return ib.get()


def _generic_step(T, tirx, accs, xq, w, m, it, jt, kk, rows, width, weight_offset):
    """One reduction step of the plain-int32 kernel: s8 x s8 from their bytes."""
    for r, acc in enumerate(accs):
        row = tirx.min(it * rows + r, m - 1)
        word = xq[row, kk]
        xs = [((word << (24 - 8 * t)) >> 24) for t in range(STEP)]  # sign-extended bytes
        for c in range(width):
            base = weight_offset(jt * width + (c // 4) * 4, kk) + (c % 4) * STEP
            total = acc[c]
            for t in range(STEP):
                total = total + xs[t] * w[base + t].astype("int32")
            T.buffer_store(acc, total, [c])


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
    """The call rewrite of quantize_dense, with this module's functions and quantized rows."""
    from tvm import relax

    from .storage import _big_const

    funcs: dict = {}
    rows_of: dict = {}

    def func(bb, name, make):
        if name not in funcs:
            funcs[name] = bb.add_func(make(), name)
        return funcs[name]

    def rewrite(bb, call):
        if call.op.name != "relax.matmul" or len(call.args) != 2:
            return None
        w = _big_const(call.args[1])
        x = call.args[0]
        xt = x.ty
        if (w is None or w.ndim != 2 or not eligible(*w.shape) or not isinstance(xt, relax.TensorType)
                or str(xt.dtype) != "float32" or xt.ndim < 1 or xt.shape is None):
            return None
        k, n = (int(d) for d in w.shape)
        lead = list(xt.shape.values[:-1])
        m = 1
        for d in lead:
            m = m * d
        flat = (m, k)
        key = (x, k)
        if key not in rows_of:
            x2 = bb.emit(relax.op.reshape(x, flat)) if len(lead) != 1 else x
            gq = func(bb, f"q8_quantize_rows_{k}", lambda: quantize_rows_func(kind, k))
            q = bb.emit(relax.call_tir(gq, [x2], out_ty=[relax.TensorType((m, k // STEP), "int32"),
                                                             relax.TensorType((m,), "float32")]))
            rows_of[key] = (bb.emit(relax.TupleGetItem(q, 0)), bb.emit(relax.TupleGetItem(q, 1)))
        xq, xs = rows_of[key]
        packed, scale, sums = quantize_weight(w)
        gm = func(bb, f"q8_matmul_{k}x{n}", lambda: matmul_func(kind, k, n))
        y = relax.call_tir(gm, [xq, xs, relax.const(packed), relax.const(scale), relax.const(sums)],
                           out_ty=relax.TensorType((m, n), "float32"))
        if len(lead) == 1:
            return y
        return relax.op.reshape(bb.emit(y), (*lead, n))

    return rewrite
