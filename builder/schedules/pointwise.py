"""1x1 convs (any stride) on CPU targets as a GEMM over output pixels with a packed input.

The direct rule tiles a 1x1 conv along one feature-map row, whose width (7, 14, 28, 56 in
ResNet50) admits no 12-accumulator tile: 2x32 tiles (8 accumulators) leave Zen 2's FMA
pipes waiting on latency (~155 GFLOP/s of ~205), and 14-row tiles read 14 rows 4 KiB apart
that share one L1 set when CI >= 1024. Here a pack step copies each group of MR output
pixels' input channels into one contiguous [CI, MR] panel (strided 1x1 convs gather their
pixels in the same copy), repeating the last pixel to pad the count to a multiple of MR, so
the GEMM runs whole 6x16 tiles with contiguous broadcasts. On ResNet50's 1x1 convs (2
threads): 14x14 1024->256 0.52 vs 0.65 ms, 14x14 256->1024 0.53 vs 0.67, 28x28 512->128
0.55 vs 0.70, 7x7 2048->512 0.52 vs 0.74, strided 28x28 512->1024 1.04 vs 1.34.
"""
from __future__ import annotations

import numpy as np

from .gemm import conv_rewrite_pass, cpu_rule, inline_epilogue, named_blocks, schedule_gemm, tile_rows, vectorize_inner

BLOCKS = ("pw_pack", "pw_gemm", "pw_out")


def pack_weights(w_hwio: np.ndarray, nr: int) -> np.ndarray:
    """1x1 HWIO weights -> [CO/nr, CI, nr] panels."""
    ci, co = w_hwio.shape[2], w_hwio.shape[3]
    return np.ascontiguousarray(w_hwio.reshape(ci, co // nr, nr).transpose(1, 0, 2))


def pointwise_te(x, w, stride: int, mr: int):
    """x [N, H, W, CI], w [CO/nr, CI, nr] -> [N, OH, OW, CO]."""
    from tvm import te, tirx

    n_, h, wd, ci = x.shape
    nr = int(w.shape[2])
    co = int(w.shape[0]) * nr
    oh, ow = (int(h) - 1) // stride + 1, (int(wd) - 1) // stride + 1
    pixels = oh * ow
    padded = -(-pixels // mr) * mr

    def pack(b, po, k, pi):
        p = tirx.min(po * mr + pi, pixels - 1)
        return x[b, (p // ow) * stride, (p % ow) * stride, k]

    a = te.compute((n_, padded // mr, ci, mr), pack, name="pw_pack")
    k = te.reduce_axis((0, ci), name="k")
    g = te.compute((n_, padded, co), lambda b, p, c: te.sum(a[b, p // mr, k, p % mr] * w[c // nr, k, c % nr], axis=k),
                   name="pw_gemm")
    return te.compute((n_, oh, ow, co), lambda b, y, xx, c: g[b, y * ow + xx, c], name="pw_out")


def use_pointwise():
    """Relax pass: 1x1 convs without padding, CO a multiple of 8 -> call_tir of pointwise_te
    with the weights packed here, once."""
    def rewrite(bb, call, info):
        strides, padding, hw, weights = info
        if (list(weights.shape[:2]) != [1, 1] or any(padding) or strides[0] != strides[1]
                or weights.shape[3] % 8):
            return None
        nr = 16 if weights.shape[3] % 16 == 0 else 8
        pixels = ((hw[0] - 1) // strides[0] + 1) * ((hw[1] - 1) // strides[1] + 1)
        from tvm import relax

        wp = relax.const(pack_weights(weights, nr))
        return bb.call_te(pointwise_te, call.args[0], wp, strides[0], tile_rows(pixels),
                          primfunc_name_hint="conv2d_pointwise")

    return conv_rewrite_pass("EdgebundlePointwise", rewrite)


def pointwise_rule(params):
    """Schedule for a PrimFunc holding the pw_* blocks plus any elementwise epilogue: the pack
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
        a = sch.get(pack).writes[0].source
        w = next(r.source for r in sch.get(gemm).reads if len(r.source.shape) == 3
                 and not r.source.same_as(sch.get(gemm).writes[0].source))  # [CO/nr, CI, nr]
        schedule_gemm(sch, gemm, int(a.shape[3]), int(w.shape[2]), rows_outer=True)
        b, y, x, c = sch.get_loops(out)
        sch.parallel(y)
        vectorize_inner(sch, c, params.vector)
        return sch

    return cpu_rule("EdgebundleCPUPointwise", _schedule)
