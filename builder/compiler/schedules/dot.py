"""Dense layers as dot-product kernels over packed weights: what the int8 (schedules/int8.py)
and bf16 (schedules/bf16.py) computes share.

A matmul with a constant weight W [K, N] becomes:
- rows: x [m, K] float32 made into [m, K/step] 32-bit words by a kernel of the scheme's, each
  word `step` reduction elements (four int8 bytes, two bfloat16 halves), so one broadcast of
  a word feeds `step` reduction steps; made once for every matmul reading the same rows
  (BERT's Q, K and V), however torch.export flattened them;
- weights, at build: [N/16, K/step, 16, step] panels, 64 bytes per reduction word, the
  operand of one vpdpbusd / vdpbf16ps;
- the product: a register tile of `rows` x (vectors x lanes) accumulators per thread task,
  then the scheme's epilogue, into which a following bias add is folded.

The kernels are written loop by loop (TIR through the IR builder), not scheduled: TVM 0.27's
tensorize segfaults, and LLVM forms neither vpdpbusd nor vdpbf16ps from plain TIR.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

PANEL = 16  # output columns per weight panel (one 64-byte vector of 16 x 32-bit words)

# op_pattern 8 (kOpaque): FuseOps leaves the kernels alone, and AnnotateTIROpPattern, which
# expects a root block, does not read them. tir.is_scheduled: dlight skips them.
ATTRS = {"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8}


def target_has(tvm_target, feature: str) -> bool:
    """Whether a TVM llvm target has an LLVM CPU feature (False where LLVM cannot say)."""
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, tvm_target))
    except Exception:
        return False


def is_aarch64(tvm_target) -> bool:
    return str(tvm_target.attrs.get("mtriple", "")).startswith("aarch64")


def i64(v):
    from tvm import tirx

    return tirx.const(v, "int64")


@dataclasses.dataclass(frozen=True)
class Tile:
    """The register tile: `rows` x `vectors` accumulator vectors of `lanes` 32-bit lanes;
    `partials` lanes per output column (a kernel summing them in its epilogue)."""

    rows: int
    vectors: int
    lanes: int
    partials: int = 1


@dataclasses.dataclass(frozen=True)
class Kernel:
    """What a scheme's matmul adds to the shared loop nest.

    inputs: (name, shape given m, dtype) of every argument after the rows and before the
    output, the packed weights named "w"; wload(w, word offset) -> the weight vector there;
    step(acc, word, weights) -> acc after one reduction word; epilogue(T, bufs, acc, row,
    col0, vectors) stores a tile row; llvm: LLVM IR the kernel calls into (pragma_import_llvm:
    functions whose types TVM cannot write, such as bfloat vectors)."""

    name: str
    acc_dtype: str
    inputs: tuple
    wload: Callable
    step: Callable
    epilogue: Callable
    llvm: str | None = None


def tiled_matmul(kernel: Kernel, tile: Tile, k_words: int, n: int, rows_dtype: str = "int32"):
    """(rows [m, K/step] words, *kernel.inputs) -> float32 [m, N]. Tiles of `rows` x (vectors x
    lanes) outputs, in parallel, column tiles outside row tiles (a thread's consecutive tiles
    share a weight panel); the last rows of a partial tile read the matrix's last row again
    (no padding pass) and are not stored."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    lanes, rows, partials = tile.lanes, tile.rows, tile.partials
    width = tile.vectors * lanes
    if width % PANEL and PANEL % width:
        raise ValueError(f"tile of {width} columns does not read {PANEL}-column panels")
    vectors = tile.vectors
    while n % (vectors * lanes):
        vectors -= 1
    width = vectors * lanes
    tiles_n = n // width
    size = lanes * partials
    acc_t = f"{kernel.acc_dtype}x{size}"

    def weight_word(col0, kk):
        # column col0 (a multiple of lanes) of panel col0 // 16, reduction word kk
        panel, within = col0 // PANEL, col0 % PANEL
        return (panel * k_words + kk) * PANEL + within

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(kernel.name)
            T.func_attr(ATTRS)
            m = tirx.Var("m", "int64")
            xq = T.match_buffer(T.arg("xq", T.handle()), (m, k_words), rows_dtype)
            bufs = {name: T.match_buffer(T.arg(name, T.handle()), shape(m), dtype)
                    for name, shape, dtype in kernel.inputs}
            y = T.match_buffer(T.arg("y", T.handle()), (m, n), "float32")
            bufs["y"] = y
            tiles_m = (m + rows - 1) // rows
            with T.sblock("root"), contextlib.ExitStack() as scope:
                if kernel.llvm:
                    scope.enter_context(T.attr(tirx.const(0, "int32"), "pragma_import_llvm", kernel.llvm))
                with T.parallel(i64(0), i64(tiles_n) * tiles_m) as t:
                    jt, it = t // tiles_m, t % tiles_m
                    # One buffer per row, in global scope: TVM 0.27 turns "local" allocations in a
                    # parallel body into heap workspaces, whose loads and stores LLVM keeps; these
                    # become allocas it promotes to registers (int8 128x768x768: 0.98 -> 0.17 ms).
                    accs = [T.alloc_buffer((width * partials,), kernel.acc_dtype, scope="global")
                            for _ in range(rows)]
                    for acc in accs:
                        for v in range(vectors):
                            T.buffer_store(acc, tirx.Broadcast(tirx.const(0, kernel.acc_dtype), size),
                                           [tirx.Ramp(v * size, 1, size)])
                    with T.serial(i64(0), i64(k_words)) as kk:
                        wvs = [kernel.wload(bufs["w"], weight_word(jt * width + v * lanes, kk)) for v in range(vectors)]
                        for r, acc in enumerate(accs):
                            word = xq[tirx.min(it * rows + r, m - 1), kk]
                            for v in range(vectors):
                                cur = acc.vload([v * size], acc_t)
                                T.buffer_store(acc, kernel.step(cur, word, wvs[v]), [tirx.Ramp(v * size, 1, size)])
                    for r, acc in enumerate(accs):
                        row = it * rows + r
                        with T.If(row < m):
                            with T.Then():
                                kernel.epilogue(T, bufs, acc, row, jt * width, vectors)
    return ib.get()


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """What a matmul kernel does to its sums before storing them: + bias [N], + residual
    [m, N] (the tensor the layer's output is added to), then max(., 0)."""

    bias: bool = False
    residual: bool = False
    relu: bool = False

    @property
    def suffix(self) -> str:
        return "".join(f"_{n}" for n, on in (("bias", self.bias), ("res", self.residual), ("relu", self.relu)) if on)


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A dense compute the rewrite below applies: `prefix` of its functions' names;
    rows_func(k) -> PrimFunc x [m, K] -> rows_outputs(m, k) (the words first);
    matmul_func(k, n, Epilogue) -> PrimFunc; weights(W) -> the matmul's constant arguments
    after the rows outputs; step: reduction steps per 32-bit word; take(bb, call) -> a
    rewritten embedding lookup or None; epilogues: which of Epilogue's fields its kernels
    do; convs: whether 1x1 convolutions become its matmuls."""

    prefix: str
    rows_func: Callable
    rows_outputs: Callable
    matmul_func: Callable
    weights: Callable
    step: int
    take: Callable
    epilogues: tuple = ("bias",)
    convs: bool = False
    # conv_rows(hw, ci, kernel, stride, pad, k) -> PrimFunc x NHWC -> a spatial conv's rows
    # (receptive fields, K = KH*KW*CI padded to a multiple of step); spatial(kernel, stride,
    # out_width) -> whether a conv takes that path (None: 1x1 convs only)
    conv_rows: Callable | None = None
    spatial: Callable | None = None
    # rows_te(x [..., K]) -> a TE compute of the rows, made where FuseOps may fuse it with its
    # producer (GELU), instead of rows_func's kernel
    rows_te: Callable | None = None

    def eligible(self, k: int, n: int) -> bool:
        """A [K, N] weight its kernels take: whole reduction words and 16-column panels."""
        return k % self.step == 0 and n % PANEL == 0 and k >= 16


def dense_pass(scheme: Scheme, name: str):
    """Relax pass (before legalization, before store_weights): matmul(x, W) with x float32
    [..., K] and W a constant float32 [K, N] (and, with scheme.convs, 1x1 conv2d NHWC x HWIO)
    -> reshape, rows, matmul kernel, reshape; what follows the product is folded into the
    kernel where the scheme's epilogue does it: per-column affine constants (a bias, a
    BatchNorm's subtract / divide / multiply / add: into the weights and the bias), a
    residual add, a ReLU. Products left unused are dropped."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        from .common import op_rewrite_pass

        mod = op_rewrite_pass(name + "Calls", _rewriter(scheme))(mod)
        return relax.transform.DeadCodeElimination()(mod)

    return _pass


@dataclasses.dataclass
class _Product:
    """A matmul kernel's call in the making: rows (the rows kernel's outputs), the fp32
    weight W [K, N] as scaled so far, the bias so far, the residual [m, N], relu."""

    rows: tuple
    w: object
    weights: list  # scheme.weights(w) as constants
    m: object
    bias: object = None
    residual: object = None
    relu: bool = False


def _column_values(c, n: int):
    """A constant's values when it varies along the last axis only (shape [], [N] or [1, ...,
    1, N] or size 1), as float32 [N]; else None."""
    import numpy as np

    if type(c).__name__ != "GenericConst" or not hasattr(c.value, "shape") or str(c.ty.dtype) != "float32":
        return None
    shape = [int(d) for d in c.value.shape]
    v = c.value.numpy().astype(np.float32)
    if v.size == 1:
        return np.full(n, v.reshape(-1)[0], np.float32)
    if shape[-1] != n or any(d != 1 for d in shape[:-1]):
        return None
    return v.reshape(n)


# Producers of rows that FuseOps fuses into scheme.rows_te (GELU's last op: a multiply); other
# rows (a LayerNorm's, read by the residual too) get the rows kernel, which reads a row as
# contiguous vectors (the TE compute, unfused, took twice as long: BERT-base 1.2 vs 0.6 ms).
_ELEMENTWISE = ("relax.multiply", "relax.add", "relax.nn.gelu", "relax.tanh", "relax.nn.relu", "relax.nn.silu")


def _rewriter(scheme: Scheme):
    """The call rewrite of dense_pass. Rows are reused by var, which holds within one dataflow
    block: the torch frontend writes one per function."""
    import numpy as np
    import tvm_ffi
    from tvm import relax

    from .common import const_int as _const_int
    from .common import static_conv
    from .storage import big_const, plain_take

    funcs: dict = {}
    rows_of: dict = {}
    made: dict = {}  # var of a matmul kernel call -> _Product

    def func(bb, name, make):
        if name not in funcs:
            funcs[name] = bb.add_func(make(), name)
        return funcs[name]

    def product(bb, expr):
        """The matmul kernel's call var behind expr, through reshapes and aliases, else None."""
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

    def emit(bb, p: _Product, shape):
        """The kernel call for p, reshaped to `shape` (the product as its users see it)."""
        k, n = p.w.shape
        epi = Epilogue(p.bias is not None, p.residual is not None, p.relu)
        gm = func(bb, f"{scheme.prefix}_matmul_{k}x{n}{epi.suffix}", lambda: scheme.matmul_func(k, n, epi))
        args = [*p.rows, *p.weights]
        if p.bias is not None:
            args.append(relax.const(p.bias))
        if p.residual is not None:
            args.append(p.residual)
        y = bb.emit(relax.call_tir(gm, args, out_ty=relax.TensorType((p.m, n), "float32")))
        made[y] = p
        return y if len(shape) == 2 else relax.op.reshape(y, shape)

    def follow(bb, call):
        """An op on a product folded into its kernel: a new product, else None."""
        op = call.op.name
        if op == "relax.nn.relu":
            var = product(bb, call.args[0])
            if var is None or made[var].relu or "relu" not in scheme.epilogues:
                return None
            return emit(bb, dataclasses.replace(made[var], relu=True), call.ty.shape)
        if len(call.args) != 2 or not isinstance(call.ty, relax.TensorType):
            return None
        commutes = op in ("relax.add", "relax.multiply")
        for a, c, swapped in ((call.args[0], call.args[1], False), (call.args[1], call.args[0], True)):
            if swapped and not commutes:
                continue
            var = product(bb, a)
            if var is None or made[var].relu or not isinstance(a.ty, relax.TensorType) \
                    or not tvm_ffi.structural_equal(a.ty.shape, call.ty.shape):
                continue
            p = made[var]
            n = p.w.shape[1]
            values = _column_values(c, n)
            bias = p.bias if p.bias is not None else np.zeros(n, np.float32)
            if values is not None and "bias" in scheme.epilogues:
                # a scale folds into W and the bias, not into a residual already added: those
                # stay as they are (a residual is no product of W)
                if op == "relax.add":
                    return emit(bb, dataclasses.replace(p, bias=bias + values), call.ty.shape)
                if op == "relax.subtract":
                    return emit(bb, dataclasses.replace(p, bias=bias - values), call.ty.shape)
                if (op in ("relax.multiply", "relax.divide") and p.residual is None and np.all(values != 0)
                        and np.all(np.isfinite(values))):
                    scale = values if op == "relax.multiply" else (1.0 / values).astype(np.float32)
                    w = (p.w * scale).astype(np.float32)
                    return emit(bb, dataclasses.replace(p, w=w, weights=[relax.const(x) for x in scheme.weights(w)],
                                                        bias=None if p.bias is None else p.bias * scale),
                                call.ty.shape)
            if (op == "relax.add" and values is None and p.residual is None and "residual" in scheme.epilogues
                    and isinstance(c, relax.Var) and isinstance(c.ty, relax.TensorType)
                    and str(c.ty.dtype) == "float32" and tvm_ffi.structural_equal(c.ty.shape, call.ty.shape)):
                res = bb.emit(relax.op.reshape(c, (p.m, n)))
                return emit(bb, dataclasses.replace(p, residual=res), call.ty.shape)
        return None

    def dense(bb, x, w, out_lead):
        """x float32 [..., K] times the constant W [K, N] as the scheme's kernel: the product
        reshaped to [*out_lead, N]."""
        k, n = (int(d) for d in w.shape)
        lead = list(x.ty.shape.values[:-1])
        m = 1
        for d in lead:
            m = m * d
        # rows are rows however they were flattened: torch.export writes a reshape to 2-D
        # before each Linear on a 3-D input, one per Linear, all of the same tensor
        key = (x, k)
        source = bb.lookup_binding(x) if isinstance(x, relax.Var) else None
        if (isinstance(source, relax.Call) and getattr(source.op, "name", "") == "relax.reshape"
                and isinstance(source.args[0].ty, relax.TensorType) and source.args[0].ty.shape is not None
                and _const_int(source.args[0].ty.shape.values[-1]) == k):
            key = (source.args[0], k)
        producer = bb.lookup_binding(key[0]) if isinstance(key[0], relax.Var) else None
        if (key not in rows_of and scheme.rows_te is not None and x.ty.ndim >= 2 and isinstance(producer, relax.Call)
                and getattr(producer.op, "name", "") in _ELEMENTWISE):
            from .storage import INJECTIVE, with_pattern

            rows_of[key] = (bb.emit(with_pattern(bb, bb.call_te(scheme.rows_te, x, primfunc_name_hint=f"{scheme.prefix}_rows"),
                                                 INJECTIVE)),)
        if key not in rows_of:
            x2 = bb.emit(relax.op.reshape(x, (m, k))) if len(lead) != 1 else x
            gq = func(bb, f"{scheme.prefix}_rows_{k}", lambda: scheme.rows_func(k))
            outs = scheme.rows_outputs(m, k)
            q = bb.emit(relax.call_tir(gq, [x2], out_ty=outs if len(outs) > 1 else outs[0]))
            rows_of[key] = tuple(bb.emit(relax.TupleGetItem(q, i)) for i in range(len(outs))) if len(outs) > 1 else (q,)
        p = _Product(rows_of[key], w, [relax.const(a) for a in scheme.weights(w)], m)
        return emit(bb, p, (*out_lead, n))

    def conv(bb, call):
        """A conv2d NHWC x HWIO as a matmul: a 1x1 one over its (strided) pixels, a spatial one
        (where scheme.spatial takes it) over its receptive fields, made by scheme.conv_rows."""
        info = static_conv(call)
        if info is None:
            return None
        strides, padding, hw, w = info
        kh, kw, ci, co = w.shape
        if strides[0] != strides[1]:
            return None
        x = call.args[0]
        if (kh, kw) == (1, 1) and not any(padding):
            if not scheme.eligible(ci, co):
                return None
            if strides[0] != 1:
                x = bb.emit(relax.op.strided_slice(x, axes=[1, 2], begin=[0, 0], end=hw, strides=strides))
            return dense(bb, x, np.ascontiguousarray(w[0, 0]), list(call.ty.shape.values[:-1]))
        out_w = _const_int(call.ty.shape.values[2])
        k = -(-kh * kw * ci // scheme.step) * scheme.step
        if (scheme.spatial is None or out_w is None or ci % scheme.step
                or not scheme.spatial((kh, kw), strides[0], out_w) or not scheme.eligible(k, co)):
            return None
        flat = np.zeros((k, co), np.float32)
        flat[:kh * kw * ci] = w.reshape(kh * kw * ci, co)
        shape = list(call.ty.shape.values)
        m = shape[0] * shape[1] * shape[2]
        rows = bb.emit(relax.call_tir(func(bb, f"{scheme.prefix}_conv_rows_{kh}x{kw}_{ci}_s{strides[0]}_{hw[0]}x{hw[1]}",
                                           lambda: scheme.conv_rows(hw, ci, (kh, kw), strides[0], tuple(padding), k)),
                                      [x], out_ty=scheme.rows_outputs(m, k)[0]))
        p = _Product((rows,), flat, [relax.const(a) for a in scheme.weights(flat)], m)
        return emit(bb, p, shape)

    def rewrite(bb, call):
        name = call.op.name
        if name == "relax.take" and plain_take(call) and scheme.take is not None:
            return scheme.take(bb, call)
        if name in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.nn.relu") and made:
            return follow(bb, call)
        if name == "relax.nn.conv2d" and scheme.convs:
            return conv(bb, call)
        if name != "relax.matmul" or len(call.args) != 2:
            return None
        w = big_const(call.args[1])
        x = call.args[0]
        xt = x.ty
        if (w is None or w.ndim != 2 or not scheme.eligible(*w.shape) or not isinstance(xt, relax.TensorType)
                or str(xt.dtype) != "float32" or xt.ndim < 1 or not isinstance(xt.shape, relax.ShapeExpr)):
            return None
        return dense(bb, x, w, list(xt.shape.values[:-1]))

    return rewrite
