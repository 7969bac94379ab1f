"""CPU schedule rules, applied dlight-style after FuseTIR (no tuning step): their knobs
(CpuParams, per-variant defaults), their order, and the Relax pipeline around them.

Before legalization, stride-1 3x3 convs become Winograd computes (winograd.py) and 1x1 and
strided convs packed-input GEMMs (packed.py); their own rules run first. Then:
- Contraction (gemm.py): matmul / dense / batch matmul / conv2d (NHWC x HWIO) as register
  tiles, the fused epilogue computed per tile, constant weights packed at compile time.
- dlight's CPU Reduction rule: softmax, layer norm.
- Fallback: every other loop nest parallel over its outer loops and vectorised inside.

Every rule returns None instead of raising (common.cpu_rule), so a shape a rule cannot
handle falls through to the next one. A new rule goes into `cpu_rules`; helpers it shares
with the others live in common.py, which imports none of the rule modules.
"""
from __future__ import annotations

import dataclasses
import os
import threading

from .common import cpu_rule, parallel_nest
from .gemm import contraction_rule
# Kept importable from here: tests read _panel_and_tile, tools/tune.py reads_panel.
from .gemm import _panel_and_tile, reads_panel

__all__ = ["CpuParams", "TE_LOCK", "VARIANT_PARAMS", "_panel_and_tile", "contraction_rule", "cpu_pipeline",
           "cpu_rules", "fallback_rule", "params_from_env", "pre_legalize_passes", "reads_panel"]

TE_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CpuParams:
    """The knobs of the rules; `edgebundle tune` searches them per target."""

    mr: int = 4  # dense / batch matmul: output rows per register tile
    # output columns per tile (a multiple of the vector width): 4x24 = 12 accumulators of
    # 16 AVX2 registers; BERT-base 149 ms vs 178 ms with 4x16 (2 threads, Zen 2)
    nr: int = 24
    # conv2d (several spatial or reduction loops): wider and flatter tiles measured faster
    # on ResNet50 (70 vs 78 ms at 2 threads), while BERT's dense layers prefer 4x16.
    conv_mr: int = 2
    conv_nr: int = 32
    # stride-1 spatial convs (3x3): 14 output pixels x one vector = 14 accumulators, enough
    # to hide FMA latency (5 cycles x 2 pipes on Zen 2) with one weight vector and one
    # broadcast in registers. With the padding kept out of the inner loop, ResNet50's 3x3
    # convs went 1.66 -> 1.27 ms (14x14x256), 1.70 -> 1.34 ms (56x56x64) at 2 threads.
    spatial_mr: int = 14
    spatial_nr: int = 8
    spatial_ku: int = 1  # 14 accumulators leave no registers for a second unrolled step
    # maps only 7 wide (ResNet50's last stage): 7x8 tiles; 3x3 on 7x7x512 6.8 -> 3.8 ms and
    # 1x1 on 7x7 3.5 -> 2.2 ms against conv_mr x conv_nr
    narrow_mr: int = 7
    narrow_nr: int = 8
    narrow_ku: int = 2  # 7x8 tiles x 4 measured 8% slower than x 2
    ku: int = 4  # reduction unroll
    vector: int = 8  # fp32 lanes (AVX2: 8, AVX-512: 16, NEON: 4)
    # Weight panels: the width constant weights are packed to ([N/P, K, P]) when it is not the
    # tile's (0: the tile's own). Variants of one target share model.weights, so they pack
    # alike and each reads the panels with its own tiles: a tile a divisor of P (AVX2's 24 of
    # 48) or a multiple of it. The panel is the first of (this, 16, 8) dividing N.
    dense_panel: int = 0
    conv_panel: int = 0
    # Our conv GEMMs (Winograd, packed 1x1): rows per register tile (at most; fewer where
    # padding to a multiple wastes over 5%), and columns (0: the weight panel, 16).
    gemm_mr: int = 6
    gemm_nr: int = 0
    pack: bool = True  # pack constant weights to [N/NR, K, NR]
    winograd: bool = True  # stride-1 3x3 convs as Winograd F(2x2, 3x3) (schedules/winograd.py)
    winograd_min_width: int = 4  # narrower maps stay direct
    # maps this wide (sides multiples of 4) take F(4x4, 3x3), its weights fp32; 0: none
    winograd_f4_min_width: int = 0
    packed_conv: bool = True  # 1x1 and strided convs as packed-input GEMMs (schedules/packed.py)
    packed_pointwise: bool = True  # with packed_conv: 1x1 convs too (else the direct rule's tiles)
    parallel_min: int = 2048  # fewer output elements than this: no thread-pool dispatch


def fallback_rule(params: CpuParams):
    """Everything else: per top-level loop nest, leading spatial loops fused and parallel,
    the innermost spatial loop vectorised when it has a usable constant extent."""
    from tvm import s_tir

    def _schedule(func):
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root") if _has_root(sch) else None
        blocks = sch.get_child_blocks(root) if root is not None else []
        # An elementwise chain (GELU = multiply, erf, multiply, add) is one pass over
        # memory, not one per op: inline every block whose result only feeds others.
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except Exception:
                pass
        for block in sch.get_child_blocks(root) if root is not None else []:
            parallel_nest(sch, block, params)
        return sch

    def _has_root(sch):
        try:
            sch.get_sblock("root")
            return True
        except Exception:
            return False

    return cpu_rule("EdgebundleCPUFallback", _schedule)


# Each variant's defaults (runtime/cpu.py names the variants). AVX-512 has 16 fp32 lanes and
# 32 registers, so its tiles hold about twice the accumulators of AVX2's 16: enough to
# cover two 512-bit FMA pipes of 4-cycle latency (Zen 5, Intel server cores).
# Variants share model.weights, so a dense weight is packed to one panel width for both:
# 48 columns, which AVX-512 reads whole (8 rows x 3 zmm = 24 accumulators) and AVX2 in
# 24-column halves (4 x 3 ymm). BERT-base seq 128, 2 threads, Zen 5 (exp. in one process):
# AVX-512 8x48 56-65 ms vs 105-110 ms reading AVX2's former 24-wide panels in 8-lane pieces
# (ONNX Runtime: 74 ms); AVX2 4x24 on 48 panels level with 24 panels (105.6 vs 105.6 ms;
# 5% slower in a second run). 32-wide panels: AVX-512 as fast, AVX2 18% slower (its 16-column
# tiles). Our conv GEMMs (Winograd, packed 1x1) pack 16-wide panels for both; AVX-512 reads
# two at a time. Its conv tiles, per ResNet50 kernel (2 threads, Zen 5, ms, AVX2's tile ->
# this one): GEMMs 12x32 -> 8x32 over eight 1x1 and Winograd kernels 5.39 -> 4.64 (12 rows
# pad 7x7 maps' 49 to 60); strided 3x3 on 7-wide maps 7x8 -> 7x32 3.09 -> 1.24; the 7x7/2
# stem 2x32 -> 7x32 1.51 -> 1.03; direct stride-1 3x3 (without Winograd) 14x8 -> 14x32
# 5.15 -> 0.73 on 14x14x256. With those tiles its 1x1 convs run direct: whole ResNet50
# 18.3 ms vs 20.0 all packed, 18.6 packed below 14 wide only (200 rounds in one process;
# alone, a 7x7 one ran 0.34 ms packed vs 0.62 direct, a 56x56 one 0.89 vs 0.83: isolated
# kernels keep their weights in cache, the model does not). Conv weights are packed to
# 16-wide panels for every variant, so a 1x1 conv's [CO/16, 1, 1, CI, 16] weights are the
# same bytes whichever rule reads them.
# Winograd F(4x4, 3x3) on the 56- and 28-wide maps (both variants: it decides the weights):
# whole ResNet50 at batch 1, 150 rounds in one process, Zen 5: AVX-512 min 17.8 -> 17.1 ms,
# q1 19.6 -> 18.9; AVX2 min 33.0 -> 32.0, q1 35.3 -> 34.4; weights 132.6 vs 127.6 MB. Not on
# 14-wide maps (they would need padding to 16, saving less, and their weights would grow by
# 26 MB). With fp16 / bf16 storage these weights stay fp32 (winograd.py says why).
_SHARED = {"dense_panel": 48, "conv_panel": 16, "winograd_f4_min_width": 28}
VARIANT_PARAMS: dict[str, dict] = {
    "avx2": {**_SHARED},
    "avx512": {**_SHARED, "vector": 16, "mr": 8, "nr": 48, "gemm_mr": 8, "gemm_nr": 32, "conv_mr": 7,
               "conv_nr": 32, "narrow_nr": 32, "spatial_nr": 32, "packed_pointwise": False},
}
VARIANT_PARAMS["avx512-vnni"] = VARIANT_PARAMS["avx512"]  # int8 builds: the same fp32 kernels besides
VARIANT_PARAMS["avx512-bf16"] = VARIANT_PARAMS["avx512"]  # bf16 builds: convs and the rest as AVX-512


def params_from_env(variant: str | None = None) -> CpuParams:
    """The variant's defaults, then EDGEBUNDLE_CPU_PARAMS="mr=6,nr=16,winograd=false" (every
    variant) and EDGEBUNDLE_CPU_PARAMS_AVX512="..." (that variant only): experiments without
    code changes."""
    kinds = {f.name: f.type for f in dataclasses.fields(CpuParams)}
    fields = dict(VARIANT_PARAMS.get(variant or "", {}))
    raws = [os.environ.get("EDGEBUNDLE_CPU_PARAMS", "")]
    if variant:
        raws.append(os.environ.get("EDGEBUNDLE_CPU_PARAMS_" + variant.upper().replace("-", "_"), ""))
    for raw in raws:
        for item in filter(None, raw.split(",")):
            key, value = (x.strip() for x in item.split("="))
            fields[key] = value.lower() in ("1", "true", "yes") if kinds.get(key) in (bool, "bool") else int(value)
    return CpuParams(**fields)


def cpu_rules(params: CpuParams | None = None) -> list:
    from tvm.s_tir import dlight as dl

    from .packed import packed_conv_rule
    from .winograd import winograd_rule

    params = params or params_from_env()
    return [winograd_rule(params), packed_conv_rule(params), contraction_rule(params), dl.cpu.Reduction(),
            fallback_rule(params)]


_ELEMENTWISE_UNARY = ("relax.nn.gelu", "relax.nn.relu", "relax.nn.silu", "relax.tanh", "relax.sigmoid")


def sink_reshapes_through_elementwise():
    """reshape(f(reshape(x))) -> f(x) when the outer reshape undoes the inner one and f is
    elementwise. torch.export writes Linear on a 3-D input as reshape -> 2-D matmul + bias ->
    reshape back, so GELU sits between two reshapes and FuseOps cannot put it into the
    matmul's epilogue: it would cost a separate pass over the FFN activations."""
    import tvm_ffi
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    x = wildcard()
    inner = is_op("relax.reshape")(x, wildcard())
    acts = [is_op(name)(inner) for name in _ELEMENTWISE_UNARY]
    act = acts[0]
    for a in acts[1:]:
        act = act | a
    outer = is_op("relax.reshape")(act, wildcard())

    def rewriter(expr, matches):
        src = matches[x]
        try:
            same = tvm_ffi.structural_equal(expr.ty.shape, src.ty.shape)
        except Exception:
            return expr
        if not same:
            return expr
        op_call = next(matches[a] for a in acts if a in matches)
        return relax.Call(op_call.op, [src], op_call.attrs)

    return _rewrite_pass("EdgebundleSinkReshapes", outer, rewriter)


def decompose_gelu():
    """nn.gelu(x) -> x * (0.5 + erf(x / sqrt 2) * 0.5) as Relax ops, so FastMathTransform
    turns the erf into a polynomial. Legalized whole, gelu lowers to a scalar erff call per
    element: BERT-base's FFN kernels spent 1-2 ms of 4.3 in it (2 threads)."""
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    x = wildcard()
    pattern = is_op("relax.nn.gelu")(x)

    def rewriter(expr, matches):
        src = matches[x]
        dtype = src.ty.dtype
        half = relax.const(0.5, dtype)
        erf = relax.op.erf(relax.op.multiply(src, relax.const(0.7071067811865476, dtype)))
        return relax.op.multiply(src, relax.op.add(half, relax.op.multiply(erf, half)))

    return _rewrite_pass("EdgebundleDecomposeGelu", pattern, rewriter)


def _rewrite_pass(name: str, pattern, rewriter):
    """A module pass applying relax.dpl.rewrite_call(pattern, rewriter) to every Relax function."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = rewrite_call(pattern, rewriter, func)
        return mod

    return _pass


def pre_legalize_passes(params: CpuParams | None = None, storage: str = "fp32", quantize: str = "none",
                        compute: str = "fp32") -> list:
    import tvm
    from tvm import relax

    from .bf16 import bf16_dense
    from .bf16 import kernel_kind as bf16_kind
    from .int8 import kernel_kind, quantize_dense

    from .packed import use_packed_conv
    from .storage import store_weights
    from .winograd import use_winograd

    params = params or params_from_env()
    return [
        sink_reshapes_through_elementwise(),
        # BatchNorm becomes elementwise ops the conv epilogue absorbs. (FoldBatchnormToConv2D
        # segfaults on the torch frontend's output in TVM 0.27.)
        relax.transform.DecomposeOpsForInference(),
        # batch_norm decomposes into a tuple whose first item is used: without folding the
        # tuple away, FuseOps stops there and the ReLU after it becomes its own kernel.
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
        relax.transform.FoldConstant(),
        # bf16 first: its kernels take the 1x1 convs the packed-conv rewrite would
        *([bf16_dense(bf16_kind(tvm.target.Target.current()))] if compute == "bf16" else []),
        *([use_winograd(params.winograd_min_width, params.gemm_mr, params.winograd_f4_min_width, storage)]
          if params.winograd else []),
        *([use_packed_conv(params.gemm_mr, params.packed_pointwise, storage)] if params.packed_conv else []),
        # int8 first: the dense weights it takes are quantized from fp32, not from fp16
        *([quantize_dense(kernel_kind(tvm.target.Target.current()))] if quantize == "int8" else []),
        *([store_weights(storage)] if storage != "fp32" else []),
        # erf (GELU), tanh, exp as vectorisable polynomials instead of scalar libm calls.
        decompose_gelu(),
        relax.transform.FastMathTransform(),
    ]


def split_weight_packing():
    """relax.transform.SplitLayoutRewritePreproc, minus the PrimFuncs it cannot read.

    It visits every PrimFunc and aborts on a root holding a single subtree without blocks,
    which is how TVM 0.27 legalizes cumsum (RoBERTa's position ids): an opaque scan. Such
    functions have no weight packing to split; they are set aside and put back unchanged."""
    import tvm
    from tvm import relax, tirx

    split = relax.transform.SplitLayoutRewritePreproc()

    def readable(gv, func) -> bool:
        try:
            split(tvm.IRModule({gv: func}))
            return True
        except tvm.error.InternalError:
            return False

    @tvm.transform.module_pass(opt_level=0, name="EdgebundleSplitWeightPacking")
    def _split(mod, _ctx):
        aside = {gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc) and not readable(gv, f)}
        if not aside:
            return split(mod)
        kept = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in aside},
                            attrs=mod.attrs, global_infos=mod.global_infos)
        out = split(kept)
        for gv, f in aside.items():
            out[gv] = f
        return out

    return _split


def cpu_pipeline(target, params: CpuParams | None = None, schedule: bool = True, storage: str = "fp32",
                 quantize: str = "none", compute: str = "fp32"):
    """The Relax pipeline for llvm targets: TVM's CPU stages with our schedules after FuseTIR.

    Before legalization: BatchNorm is decomposed for inference (its scale/shift then fuses
    into the conv epilogue) and conv2d goes NHWC x HWIO, the layout the contraction rule
    vectorises along output channels. After scheduling, weight packing is split into its
    own function and folded while the weights are still constants; builder/compiler/weights.py then
    lifts them, packed, into model.weights."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cg  # the package does not re-export all stages
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0, name="EdgebundleCPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            # TOPI's legalizations nest te.tag_scope, whose stack is one Python global: two
            # variants compiling in two threads (builder/compiler/variants.py) must not
            # legalize at once ("nested op_tag is not allowed"). The rest runs in parallel.
            with TE_LOCK:
                mod = tvm.transform.Sequential([
                    *pre_legalize_passes(params, storage, quantize, compute),
                    *cg.library_dispatch_passes(target),
                    *cg.legalize_passes(target),
                ])(mod)
            passes = []
            if schedule:
                passes += [dl.ApplyDefaultSchedule(*cpu_rules(params)),
                           split_weight_packing(),
                           relax.transform.FoldConstant(),
                           relax.transform.DeadCodeElimination()]
            passes += [*cg.dataflow_lower_passes(target), *cg.finalize_passes(target)]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
