"""What the CPU schedule modules share: loop helpers every rule uses, the dlight rule
wrapper, and the Relax rewrite passes our conv and dense computes are put in with. It
imports none of them, so cpu.py, gemm.py, packed.py and winograd.py import it and never
each other back."""
from __future__ import annotations

import math
import os

# EDGEBUNDLE_SCHEDULE_DEBUG=1 re-raises inside rules instead of falling through.
DEBUG = bool(os.environ.get("EDGEBUNDLE_SCHEDULE_DEBUG"))


def const_int(x):
    try:
        return int(x)
    except TypeError:
        return None


def divisor(extent, prefs):
    """The first of prefs dividing a static extent (1 if none does); prefs[0] for a symbolic one."""
    ext = const_int(extent)
    if ext is None:
        return prefs[0]
    for p in prefs:
        if ext % p == 0:
            return p
    return 1


def cpu_rule(name: str, schedule):
    """A dlight rule for llvm targets running schedule(func) -> Schedule | None. It returns None
    instead of raising (an exception inside ApplyDefaultSchedule would abort the whole
    compile), so a function the rule cannot handle falls through to the next rule."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    def apply(func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            return schedule(func)
        except Exception:
            if DEBUG:
                raise
            return None

    return dl.ScheduleRule.from_callable(name)(apply)


def named_blocks(sch, names):
    """The blocks of these names (our own computes), or None when one is missing."""
    try:
        return [sch.get_sblock(n) for n in names]
    except Exception:
        return None


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


def vectorize_columns(sch, loop, width: int, piece: int, vector: int) -> None:
    """A tile's `width` columns vectorised: in pieces of `piece` contiguous lanes (a weight
    panel narrower than the tile), each as one vector when it is a power-of-two number of
    hardware vectors (measured faster as one wide vector), else as unrolled vector-wide
    parts (LLVM handles a 24-lane vector badly; three 8-lane ones are what AVX2 has)."""
    if piece < width:
        outer, loop = sch.split(loop, [None, piece])
        sch.unroll(outer)
    # A piece that is no multiple of the vector (AVX-512 reading 24 columns) goes in narrower
    # vectors: LLVM lowers a 24-lane vector on AVX-512 ~6x slower than 3 x 8, and a 48-lane
    # one on AVX2 4.4x slower than 6 x 8 (BERT-base, 2x48 tiles: 464 vs 106 ms, Zen 5).
    vector = math.gcd(piece, vector)
    count = piece // vector
    if count > 1 and count & (count - 1):  # not a power of two
        jv, jl = sch.split(loop, [None, vector])
        sch.vectorize(jl)
        sch.unroll(jv)
    else:
        sch.vectorize(loop)


def vectorize_inner(sch, loop, vec: int) -> None:
    if (const_int(sch.get(loop).extent) or 1) % vec == 0:
        sch.vectorize(sch.split(loop, [None, vec])[1])


def parallel_nest(sch, block, params) -> None:
    """Leading spatial loops fused and parallel, the innermost vectorised when possible
    (params: a CpuParams, for parallel_min and vector)."""
    from tvm import tirx

    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if not loops or len(loops) != len(stmt.iter_vars):
        return
    spatial = []
    for loop, iv in zip(loops, stmt.iter_vars):
        if iv.iter_type != tirx.IterVar.DataPar:
            break
        spatial.append(loop)
    if not spatial:
        return
    # Parallel over just enough outer loops; inner loops stay as they are, so LLVM
    # still vectorises them (fusing everything turns indices into div/mod).
    # A symbolic extent is the batch: usually 1, so it does not count as parallel work.
    extents = [const_int(sch.get(l).extent) for l in spatial]
    take, work = 0, 1
    while take < len(spatial) - (1 if len(spatial) > 1 else 0):
        work *= extents[take] or 1
        take += 1
        if work >= 64:
            break
    total = 1
    for e in extents:
        total *= e or 1
    if total >= params.parallel_min and work >= 2:
        outer = sch.fuse(*spatial[:take]) if take > 1 else spatial[0]
        sch.parallel(outer)
    last = spatial[-1]
    # TVM 0.27 cannot vectorise stores to bool buffers (int8xN vs bool lanes at lowering).
    has_bool = any(str(r.source.dtype) == "bool" for r in [*stmt.reads, *stmt.writes])
    if len(spatial) == len(loops) and len(spatial) > take and not has_bool:
        ext = extents[-1]
        if ext is not None and ext % params.vector == 0:
            if ext <= 8 * params.vector:
                sch.vectorize(last)
            else:
                _, vec = sch.split(last, [None, params.vector])
                sch.vectorize(vec)


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
