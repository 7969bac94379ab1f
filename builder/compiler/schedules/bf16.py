"""bfloat16 dense layers (`build --compute bf16|auto`: the bf16 variant's kernels).

A matmul with a constant weight W [K, N] becomes (schedules/dot.py's loop nest):
- weights, at build: bfloat16 (round to nearest even), packed [N/16, K/2, 16, 2]: 16
  columns x 2 reduction steps = 64 bytes, the operand of one vdpbf16ps;
- activations, per call: each row (token) rounded to bfloat16 pairs, two in a 32-bit word
  (rows_func), so one broadcast feeds two reduction steps; once for every matmul reading the
  same rows (Q, K and V);
- the product: fp32 accumulators in registers (vdpbf16ps on AVX512_BF16, bfdot on Armv8.6
  BF16), the bias added in the epilogue. LayerNorm, softmax, GELU, residuals, attention's
  score matmuls and the logits stay fp32.

TVM 0.27 legalizes every bfloat16 value of an llvm target to float32 or uint16, so TIR can
write no <32 x bfloat> operand: the kernels call a two-line LLVM IR function (imported with
pragma_import_llvm, inlined by LLVM) that bitcasts the 32-bit words to bfloat vectors and
calls the instruction. 128x768x768, 2 threads, Zen 5: 0.16 ms, against 0.63 ms for our fp32
AVX-512 kernel and 0.17 ms for int8 VNNI (the bf16 instruction does half the multiply-adds
of vpdpbusd but needs no dequantization).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .dot import PANEL, Epilogue, Kernel, Scheme, Tile, dense_pass, i64, is_aarch64, target_has, tiled_matmul
from .storage import bf16_bits

STEP = 2  # reduction steps per 32-bit word
# Validation against PyTorch fp32 (|ours - torch| <= atol + rtol * max|torch|): bf16 keeps 8
# bits of mantissa for both operands, so a K-long dot product moves by ~2^-9 * sqrt(K) of
# its terms' scale: tiny random BERTs 0.4-1.2% of the largest output. The accuracy gate
# (builder/validate/accuracy.py) is the real check, this one catches a broken kernel.
TOLERANCE = 0.05


@dataclasses.dataclass(frozen=True)
class Kind:
    """A bf16 kernel: the instruction (`name`), its register tile, the LLVM function the
    kernel calls (`call`) and its IR."""

    name: str
    tile: Tile
    call: str
    llvm: str


_X86 = """
define <16 x float> @edgebundle_dpbf16ps(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) {
  %x = bitcast <16 x i32> %a to <32 x bfloat>
  %y = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %x, <32 x bfloat> %y)
  ret <16 x float> %r
}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
"""
_ARM = """
define <4 x float> @edgebundle_bfdot(<4 x float> %acc, <4 x i32> %a, <4 x i32> %b) {
  %x = bitcast <4 x i32> %a to <8 x bfloat>
  %y = bitcast <4 x i32> %b to <8 x bfloat>
  %r = call <4 x float> @llvm.aarch64.neon.bfdot.v4f32.v8bf16(<4 x float> %acc, <8 x bfloat> %x, <8 x bfloat> %y)
  ret <4 x float> %r
}
declare <4 x float> @llvm.aarch64.neon.bfdot.v4f32.v8bf16(<4 x float>, <8 x bfloat>, <8 x bfloat>)
"""

KINDS = {
    # 8 rows x 3 zmm = 24 accumulators of 32 registers; 128x768x768 in 0.16 ms (Zen 5, 2
    # threads), ~95% of vdpbf16ps's peak there.
    "avx512bf16": Kind("avx512bf16", Tile(8, 3, 16), "edgebundle_dpbf16ps", _X86),
    # Armv8.6 BF16 (Graviton3 / Neoverse V1 onward): 6 rows x 4 q-registers = 24 of 32.
    "bfdot": Kind("bfdot", Tile(6, 4, 4), "edgebundle_bfdot", _ARM),
}


def kernel_kind(tvm_target) -> Kind | None:
    """The bf16 kernel a TVM target can run, None where it has no bf16 dot product."""
    if is_aarch64(tvm_target):
        return KINDS["bfdot"] if target_has(tvm_target, "bf16") else None
    return KINDS["avx512bf16"] if target_has(tvm_target, "avx512bf16") else None


def pack_weight(w: np.ndarray) -> tuple[np.ndarray]:
    """W [K, N] float32 -> bfloat16 bits packed [N/16, K/2, 16, 2], as int32 words [N/16 *
    K/2 * 16] (one word: a column's two reduction steps, the lower one in the low half)."""
    k, n = w.shape
    bits = bf16_bits(w)
    packed = bits.reshape(k // STEP, STEP, n // PANEL, PANEL).transpose(2, 0, 3, 1)
    return (np.ascontiguousarray(packed).reshape(-1).view(np.int32),)


def rows_func(k: int):
    """x float32 [m, K] -> int32 [m, K/2]: each pair of a row rounded to bfloat16 (to nearest
    even, as narrow() rounds the weights), the lower index in the low half."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from .dot import ATTRS

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"bf16_rows_{k}")
            T.func_attr(ATTRS)
            m = tirx.Var("m", "int64")
            x = T.match_buffer(T.arg("x", T.handle()), (m, k), "float32")
            xq = T.match_buffer(T.arg("xq", T.handle()), (m, k // STEP), "int32")
            # 16 words a vector: one vector of the whole row (384 lanes for BERT-base) took
            # LLVM 19 s to compile
            lanes = 16 if (k // STEP) % 16 == 0 else 1
            with (T.sblock("root"), T.parallel(i64(0), m) as r, T.serial(i64(0), i64(k // STEP // lanes)) as co,
                  T.vectorized(i64(0), i64(lanes)) as ci):
                c = co * lanes + ci
                T.buffer_store(xq, _pair(x[r, c * STEP], x[r, c * STEP + 1]), [r, c])
    return ib.get()


def _pair(lo, hi):
    """Two float32 values as one int32 word of bfloat16 halves (nearest even), lo in the low half."""
    from tvm import tirx

    u32 = lambda v: tirx.const(v, "uint32")  # noqa: E731

    def bits(v):
        b = tirx.reinterpret("uint32", v)
        return (b + u32(0x7FFF) + ((b >> u32(16)) & u32(1))) >> u32(16)

    return (bits(lo) | (bits(hi) << u32(16))).astype("int32")


def rows_te(x):
    """x float32 [..., K] -> int32 [prod(...), K/2]: rows_func as a TE compute over x as it is
    (no reshape before it), so FuseOps fuses an elementwise producer into it: GELU then
    writes bfloat16 words, not float32 the rows kernel reads again."""
    from tvm import te

    lead = list(x.shape[:-1])
    k = int(x.shape[-1])
    m = 1
    for d in lead:
        m = m * d

    def word(r, c):
        idx = []
        for d in reversed(lead[1:]):
            idx.insert(0, r % d)
            r = r // d
        idx.insert(0, r)
        return _pair(x[(*idx, c * STEP)], x[(*idx, c * STEP + 1)])

    return te.compute((m, k // STEP), word, name="bf16_rows")


def conv_rows_func(hw: tuple, ci: int, kernel: tuple, stride: int, pad: tuple, k: int):
    """x float32 NHWC [b, H, W, CI] -> int32 [b * OH * OW, K/2]: each output pixel's receptive
    field (ky, kx, c: the HWIO weights' order) rounded to bfloat16 pairs, zeros outside the
    map. CI is even (dot.py's conv() sees to it), so a pair never straddles two taps: a tap
    is one bounds test and CI/2 contiguous words."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from .dot import ATTRS
    from .packed import out_size

    h, w = hw
    kh, kw = kernel
    oh, ow = out_size(hw, kernel, stride, pad)
    words = k // STEP

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(f"bf16_conv_rows_{kh}x{kw}_{ci}_s{stride}_{h}x{w}")
            T.func_attr(ATTRS)
            b = tirx.Var("b", "int64")
            x = T.match_buffer(T.arg("x", T.handle()), (b, h, w, ci), "float32")
            xq = T.match_buffer(T.arg("xq", T.handle()), (b * oh * ow, words), "int32")
            with T.sblock("root"), T.parallel(i64(0), b * oh * ow) as p:
                n, y, xx = p // (oh * ow), (p % (oh * ow)) // ow, p % ow
                half = ci // STEP
                lanes = 16 if half % 16 == 0 else 1
                for ky in range(kh):
                    for kx in range(kw):
                        iy, ix = y * stride + ky - pad[0], xx * stride + kx - pad[1]
                        base = (ky * kw + kx) * half
                        with T.serial(i64(0), i64(half // lanes)) as co:
                            with T.If(tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)):
                                with T.Then(), T.vectorized(i64(0), i64(lanes)) as cl:
                                    c = (co * lanes + cl) * STEP
                                    T.buffer_store(xq, _pair(x[n, iy, ix, c], x[n, iy, ix, c + 1]),
                                                   [p, base + co * lanes + cl])
                                with T.Else(), T.vectorized(i64(0), i64(lanes)) as cl:
                                    T.buffer_store(xq, tirx.const(0, "int32"), [p, base + co * lanes + cl])
    return ib.get()


# Spatial convs (with an even number of input channels: not a 3-channel stem, whose rows
# would be built element by element, 3 ms for ResNet50's) taken as bf16 matmuls over their
# receptive fields: strided ones, and stride-1 ones on maps at most this wide. Wider
# stride-1 3x3 maps stay Winograd F(4x4) in fp32 (4x fewer multiplies than direct, more
# than bf16's 2x); on 14- and 7-wide maps Winograd F(2x2) saves 2.25x less its transforms
# (ResNet50, 2 threads, Zen 5: 14x14x256 3x3 0.31 vs 0.32 ms, 7x7x512 0.41 vs 0.59 ms).
SPATIAL_MAX_WIDTH = 14


def _spatial(kernel, stride, out_w) -> bool:
    return stride > 1 or out_w <= SPATIAL_MAX_WIDTH


def matmul_func(kind: Kind, k: int, n: int, epi: Epilogue = Epilogue()):
    """(rows int32 [m, K/2], packed weights int32[, bias [N]][, residual [m, N]]) -> float32
    [m, N], the epilogue's bias, residual and ReLU applied as a tile row is stored (a conv's
    BatchNorm, folded into the weights and the bias, and ReLU; BERT's bias and residual)."""
    from tvm import tirx

    lanes = kind.tile.lanes
    f32, i32v = f"float32x{lanes}", f"int32x{lanes}"

    def step(acc, word, wv):
        return tirx.call_pure_extern(f32, kind.call, acc, tirx.Broadcast(word, lanes), wv)

    def epilogue(T, bufs, acc, row, col0, vectors):
        for v in range(vectors):
            col = col0 + v * lanes
            out = acc.vload([v * lanes], f32)
            if epi.bias:
                out = out + bufs["b"].vload([col], f32)
            if epi.residual:
                out = out + bufs["r"].vload([row, col], f32)
            if epi.relu:
                out = tirx.max(out, tirx.Broadcast(tirx.const(0.0, "float32"), lanes))
            T.buffer_store(bufs["y"], out, [row, tirx.Ramp(col, 1, lanes)])

    inputs = (("w", lambda m: (n // PANEL * (k // STEP) * PANEL,), "int32"),
              *((("b", lambda m: (n,), "float32"),) if epi.bias else ()),
              *((("r", lambda m: (m, n), "float32"),) if epi.residual else ()))
    kernel = Kernel(f"bf16_matmul_{k}x{n}{epi.suffix}", "float32", inputs,
                    lambda w, word: w.vload([word], i32v), step, epilogue, kind.llvm)
    return tiled_matmul(kernel, kind.tile, k // STEP, n)


def bf16_dense(kind: Kind):
    """Relax pass (before the conv rewrites, legalization and store_weights): dense layers
    with a constant weight and 1x1 convolutions -> bf16 rows and the bf16 matmul kernel
    (schedules/dot.py). Embedding tables and the remaining weights are stored bfloat16 by
    store_weights (the bf16 variant's storage)."""
    from tvm import relax

    scheme = Scheme("bf16", rows_func, lambda m, k: [relax.TensorType((m, k // STEP), "int32")],
                    lambda k, n, epi: matmul_func(kind, k, n, epi), pack_weight, STEP, None,
                    epilogues=("bias", "residual", "relu"), convs=True, conv_rows=conv_rows_func,
                    spatial=_spatial, rows_te=rows_te)
    return dense_pass(scheme, "EdgebundleBf16Dense")


def manifest_record(arrays) -> dict:
    """What model.json says of the bf16 kernels' weights (the writer's distinct arrays: the
    packed panels are its 1-D int32 ones; tied weights count once)."""
    packed = [a for a in arrays if a.dtype == np.int32 and a.ndim == 1]
    return {"scheme": "bf16", "layers": len(packed), "bf16_bytes": int(sum(a.nbytes for a in packed)),
            "weights": f"bfloat16 (round to nearest even), packed [N/{PANEL}, K/{STEP}, {PANEL}, {STEP}]; other "
                       "large weights (embeddings, convolutions left fp32) stored bfloat16, widened as read",
            "activations": "rounded to bfloat16 as rows are packed (round to nearest even)",
            "accumulation": "float32",
            "covers": f"matmuls with a constant weight of at least 4096 elements, K a multiple of {STEP}, N of "
                      f"{PANEL}; 1x1 convolutions; spatial convolutions with an even number of input channels, "
                      f"strided or on maps at most {SPATIAL_MAX_WIDTH} wide"}
