"""Register-tiled GEMM blocks shared by the Winograd and packed-input conv kernels,
whose computes pad the row count so every tile is whole: C[..., P, CO] += A[..., P, K] * B."""
from __future__ import annotations


def tile_rows(rows: int, most: int = 6) -> int:
    """Rows of the register tile: `most` unless padding the rows to a multiple of it wastes
    more than 5%, then one fewer, else two thirds of it. AVX2 (most 6, x 16 columns): 12
    accumulators, enough to hide FMA latency on Zen 2's two 5-cycle pipes, with two weight
    vectors and a broadcast in the 16 registers. Measured on ResNet50 shapes: 6x16 vs 4x16
    0.63 vs 0.89 ms (Winograd 56x56x64); 5x16 vs 6x16 0.52 vs 0.57 ms on 49 rows (1x1
    2048->512)."""
    for mr in (most, most - 1):
        if (-rows) % mr <= 0.05 * rows:
            return mr
    return max(1, most * 2 // 3)


# The block annotation our computes put on their GEMM: (MR, NR), the register tile they padded
# the rows and packed the weights for.
TILE_ATTR = "edgebundle.tile"


def schedule_gemm(sch, block, rows_outer: bool = True, cols: int = 0, vector: int = 8) -> None:
    """Loops [*lead, p, c, k]: MR x NR tiles over (p, c), the reduction inside, rows unrolled
    and columns vectorised; the static lead loops and the tile loops fused and parallel.
    A symbolic lead loop (the batch) stays serial and outermost: fused into the parallel
    loop, its symbolic strides cost 20-40% per kernel. rows_outer: a tile's rows stay in L1
    while the weight panels stream past (1x1 convs, 0.52 vs 0.61 ms on 14x14x1024->256);
    otherwise a weight panel stays while the rows stream past. cols: the tile's columns, a
    multiple of the weight panel the compute was packed for (0: one panel); each panel's
    part is a contiguous load."""
    from .cpu import _const_int, vectorize_columns

    mr, nr = (int(v) for v in sch.get(block).annotations[TILE_ATTR])
    *lead, p, c, k = sch.get_loops(block)
    extent = _const_int(sch.get(c).extent)
    width = cols if cols and cols % nr == 0 and extent is not None and extent % cols == 0 else nr
    serial = [l for l in lead if _const_int(sch.get(l).extent) is None]
    par = [l for l in lead if _const_int(sch.get(l).extent) is not None]
    po, pi = sch.split(p, [None, mr])
    co, ci = sch.split(c, [None, width])
    tiles = [po, co] if rows_outer else [co, po]
    sch.reorder(*serial, *par, *tiles, k, pi, ci)
    sch.parallel(sch.fuse(*par, *tiles))
    sch.unroll(pi)
    vectorize_columns(sch, ci, width, nr, vector)
    sch.decompose_reduction(block, k)


def inline_epilogue(sch, block) -> bool:
    """Fold the elementwise blocks after block (BatchNorm scale/shift, residual add, ReLU,
    and SiLU / decomposed GELU, which read the value twice) into it: all but the last are
    inlined into their consumers first, so a branching chain becomes one block, which is then
    inlined into block. False when that fails (the caller's rule then gives up)."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    after = blocks[names.index(sch.get(block).name_hint) + 1:]
    try:
        for b in after[:-1]:
            sch.compute_inline(b)
        consumers = sch.get_consumers(block)
        while consumers:
            if len(consumers) != 1:
                return False
            sch.reverse_compute_inline(consumers[0])
            consumers = sch.get_consumers(block)
    except Exception:
        return False
    return True


def vectorize_inner(sch, loop, vec: int) -> None:
    from .cpu import _const_int

    if (_const_int(sch.get(loop).extent) or 1) % vec == 0:
        sch.vectorize(sch.split(loop, [None, vec])[1])


def static_conv(call):
    """(stride, padding, input H and W, HWIO weights as numpy) of a float32 conv2d, NHWC x
    HWIO, groups 1, dilation 1, static H and W, constant weight; None for anything else."""
    from tvm import relax

    a = call.attrs
    if (a.data_layout != "NHWC" or a.kernel_layout != "HWIO" or a.out_layout != "NHWC" or int(a.groups) != 1
            or [int(d) for d in a.dilation] != [1, 1] or str(a.out_dtype) not in ("", "None", "void", "float32")):
        return None
    x, w = call.args
    # TVM 0.27: constants are ir.GenericConst
    if type(w).__name__ != "GenericConst" or not hasattr(w.value, "shape") or str(w.ty.dtype) != "float32":
        return None
    xs = x.ty
    if not isinstance(xs, relax.TensorType) or xs.ndim != 4 or str(xs.dtype) != "float32":
        return None
    try:
        hw = [int(d) for d in xs.shape.values[1:3]]
    except (TypeError, AttributeError):
        return None
    return [int(s) for s in a.strides], [int(p) for p in a.padding], hw, w.value.numpy()


def conv_rewrite_pass(name: str, rewrite):
    """A Relax module pass calling rewrite(builder, call, static_conv(call)) on every eligible
    conv2d call; it returns the replacement (builder.call_te(...)) or None to keep the call."""
    def on_call(bb, call):
        if call.op.name != "relax.nn.conv2d":
            return None
        info = static_conv(call)
        return rewrite(bb, call, info) if info is not None else None

    return op_rewrite_pass(name, on_call)


def op_rewrite_pass(name: str, rewrite):
    """A Relax module pass calling rewrite(builder, call) on every call of an operator (inner
    calls first); it returns the replacement or None to keep the call."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            new = rewrite(self.builder_, call)
            return call if new is None else new

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        rw = Rewrite(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rw.builder_.update_func(gv, rw.visit_expr(func))
        return rw.builder_.get()

    return _pass


def cpu_rule(name: str, schedule):
    """A dlight rule for llvm targets running schedule(func) -> Schedule | None. It returns None
    instead of raising (an exception inside ApplyDefaultSchedule would abort the whole
    compile), so a function the rule cannot handle falls through to the next rule."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    from .cpu import _DEBUG

    def apply(func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            return schedule(func)
        except Exception:
            if _DEBUG:
                raise
            return None

    return dl.ScheduleRule.from_callable(name)(apply)


def named_blocks(sch, names):
    """The blocks of these names (our own computes), or None when one is missing."""
    try:
        return [sch.get_sblock(n) for n in names]
    except Exception:
        return None
