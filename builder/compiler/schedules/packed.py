"""1x1 and strided convs on CPU targets as a GEMM over output pixels with a packed input.

The direct rule tiles a conv along one feature-map row, whose width (7, 14, 28, 56 in
ResNet50) admits no 12-accumulator tile: 2x32 tiles (8 accumulators) leave Zen 2's FMA
pipes waiting on latency (~155 GFLOP/s of ~205), and 14-row tiles read 14 rows 4 KiB apart
that share one L1 set when CI >= 1024. Here a pack step copies the receptive fields of each
group of MR output pixels into one contiguous [KH*KW*CI, MR] panel (an im2col in panels:
padding and strides are resolved in the copy), repeating the last pixel to pad the count
to a multiple of MR, so the GEMM runs whole 6x16 tiles with contiguous broadcasts. The copy
is KH*KW times the input for a spatial kernel, so stride-1 3x3 convs are left to Winograd
or the direct rule. On ResNet50's 1x1 convs (2 threads): 14x14 1024->256 0.52 vs 0.65 ms,
14x14 256->1024 0.53 vs 0.67, 28x28 512->128 0.55 vs 0.70, 7x7 2048->512 0.52 vs 0.74,
strided 28x28 512->1024 1.04 vs 1.34.
"""
from __future__ import annotations

import numpy as np

from .common import conv_rewrite_pass, cpu_rule, inline_epilogue, named_blocks, vectorize_inner
from .gemm import TILE_ATTR, schedule_gemm, tile_rows
from .storage import narrow, widen

BLOCKS = ("pc_pack", "pc_gemm", "pc_out")


def pack_weights(w_hwio: np.ndarray, nr: int) -> np.ndarray:
    """HWIO weights -> [CO/nr, KH*KW*CI, nr] panels; a 1x1 conv's as [CO/nr, 1, 1, CI, nr]:
    the shape (and bytes) the direct rule packs the same weights to (schedules/gemm.py's
    _pack_map), so a variant running 1x1 convs direct shares them in model.weights."""
    kh, kw, ci, co = w_hwio.shape
    panels = np.ascontiguousarray(w_hwio.reshape(kh * kw * ci, co // nr, nr).transpose(1, 0, 2))
    return panels.reshape(co // nr, 1, 1, ci, nr) if (kh, kw) == (1, 1) else panels


def out_size(hw, kernel, stride: int, pad) -> tuple[int, int]:
    """Output height and width; pad = (top, left, bottom, right)."""
    return ((hw[0] + pad[0] + pad[2] - kernel[0]) // stride + 1,
            (hw[1] + pad[1] + pad[3] - kernel[1]) // stride + 1)


def packed_conv_te(x, w, kernel: tuple, stride: int, pad: tuple, mr: int):
    """x [N, H, W, CI], w [CO/nr, KH*KW*CI, nr] -> [N, OH, OW, CO]; pad = (top, left,
    bottom, right)."""
    from tvm import te, tirx

    n_, h, wd, ci = x.shape
    h, wd, ci = int(h), int(wd), int(ci)
    kh_, kw_ = kernel
    nr = int(w.shape[-1])
    co = int(w.shape[0]) * nr
    # 1x1 weights are [CO/nr, 1, 1, CI, nr] (pack_weights); K is CI then
    wk = (lambda j, kk, l: w[j, 0, 0, kk, l]) if len(w.shape) == 5 else (lambda j, kk, l: w[j, kk, l])
    oh, ow = out_size((h, wd), kernel, stride, pad)
    pixels = oh * ow
    padded = -(-pixels // mr) * mr

    def pack(b, po, k, pi):
        p = tirx.min(po * mr + pi, pixels - 1)
        y = (p // ow) * stride + k // (kw_ * ci) - pad[0]
        xx = (p % ow) * stride + (k // ci) % kw_ - pad[1]
        if not any(pad):
            return x[b, y, xx, k % ci]
        inside = tirx.all(y >= 0, y < h, xx >= 0, xx < wd)
        return tirx.if_then_else(inside, x[b, y, xx, k % ci], tirx.const(0, x.dtype))

    a = te.compute((n_, padded // mr, kh_ * kw_ * ci, mr), pack, name="pc_pack")
    k = te.reduce_axis((0, kh_ * kw_ * ci), name="k")
    g = te.compute((n_, padded, co), lambda b, p, c: te.sum(a[b, p // mr, k, p % mr] * widen(wk(c // nr, k, c % nr)), axis=k),
                   name="pc_gemm", attrs={TILE_ATTR: [mr, nr]})
    return te.compute((n_, oh, ow, co), lambda b, y, xx, c: g[b, y * ow + xx, c], name="pc_out")


def use_packed_conv(rows: int = 6, pointwise: bool = True, storage: str = "fp32"):
    """Relax pass: 1x1 convs (any stride; unless not pointwise), and strided spatial convs
    with at least 16 input channels and at most 4 MiB of weights, CO a multiple of 8, equal
    strides -> call_tir of packed_conv_te with the weights packed here, once. The others
    stay direct: a 3-channel stem packs 147 scalars per pixel (2.6 vs 1.6-2.1 ms for
    ResNet50's), and a tile's rows stream every weight panel past once, which costs more
    than it saves beyond a few MiB (3x3/2 on 14x14x512, 9 MiB: 1.8-2.1 vs 1.8 ms; on
    28x28x256, 2.25 MiB: 1.3 vs 1.55). The packed weights are stored as `storage`."""
    def rewrite(bb, call, info):
        strides, padding, hw, weights = info
        kernel = tuple(int(d) for d in weights.shape[:2])
        if strides[0] != strides[1] or weights.shape[3] % 8 or (kernel == (1, 1) and not pointwise):
            return None
        if kernel != (1, 1) and (strides[0] == 1 or weights.shape[2] < 16 or weights.nbytes > 4 << 20):
            return None
        nr = 16 if weights.shape[3] % 16 == 0 else 8
        oh, ow = out_size(hw, kernel, strides[0], padding)
        if oh < 1 or ow < 1:
            return None
        from tvm import relax

        wp = relax.const(narrow(pack_weights(weights, nr), storage))
        return bb.call_te(packed_conv_te, call.args[0], wp, kernel, strides[0], tuple(padding), tile_rows(oh * ow, rows),
                          primfunc_name_hint="conv2d_packed")

    return conv_rewrite_pass("EdgebundlePackedConv", rewrite)


def packed_conv_rule(params):
    """Schedule for a PrimFunc holding the pc_* blocks plus any elementwise epilogue: the pack
    parallel over pixel groups; the GEMM as MR x NR tiles, a tile's rows outermost; the
    output (with the epilogue inlined) parallel over rows, channels vectorised."""
    from tvm import s_tir

    def _schedule(func):
        sch = s_tir.Schedule(func)
        found = named_blocks(sch, BLOCKS)
        if found is None:
            return None
        pack, gemm, out = found
        if not inline_epilogue(sch, out):
            return None
        _, po, _, pi = sch.get_loops(pack)
        sch.parallel(po)
        sch.unroll(pi)
        schedule_gemm(sch, gemm, rows_outer=True, cols=params.gemm_nr, vector=params.vector)
        b, y, x, c = sch.get_loops(out)
        sch.parallel(y)
        vectorize_inner(sch, c, params.vector)
        return sch

    return cpu_rule("EdgebundleCPUPackedConv", _schedule)
