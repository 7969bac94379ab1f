"""Winograd F(2x2, 3x3) for stride-1 3x3 convs on CPU targets.

Each 2x2 block of outputs comes from a 4x4 input tile through 16 independent channel
contractions instead of 36 multiply-adds per channel pair: 2.25x fewer FLOPs, at the cost of
two cheap transforms and transformed weights 16/9 the size. On ResNet50's 3x3 convs
(2 threads, Zen 2) the scheduled kernels ran 0.58 vs 1.14 ms (14x14x256), 0.61 vs 1.29 ms
(28x28x128), 0.63 vs 1.35 ms (56x56x64) and 1.17 vs 1.61 ms (7x7x512) against the direct
14x8-tile conv. F(4x4, 3x3) would cut more FLOPs but its transforms scale values by up to
8 and its weights are 4x the size; F(2x2, 3x3) only adds, subtracts and halves.

- `use_winograd()`: a Relax pass, after ConvertLayout and FoldConstant, turning
  conv2d(NHWC x HWIO, 3x3, stride 1, dilation 1, pad 1, constant weight, CO a multiple of
  4, maps at least 4 wide) into a call_tir of the compute below, with the weight transform
  (G g G^T) done once at compile time.
- `winograd_rule()`: the schedule of that compute (and of the epilogue FuseOps adds to it).
"""
from __future__ import annotations

import numpy as np

from .gemm import (TILE_ATTR, conv_rewrite_pass, cpu_rule, inline_epilogue, named_blocks, schedule_gemm, tile_rows,
                   vectorize_inner)

# F(2x2, 3x3) (Lavin & Gray): Y = A^T [(G g G^T) . (B^T d B)] A
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))

BLOCKS = ("wino_pad", "wino_pack", "wino_gemm", "wino_out")


def weight_transform(w_hwio: np.ndarray, nr: int) -> np.ndarray:
    """HWIO 3x3 weights -> U[4, 4, CO/nr, CI, nr] (the gemm's weight panels, nr wide)."""
    g = np.asarray(_G, np.float64)
    u = np.einsum("ei,ijco,nj->enco", g, w_hwio.astype(np.float64), g)
    ci, co = w_hwio.shape[2], w_hwio.shape[3]
    u = u.reshape(4, 4, ci, co // nr, nr).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(u.astype(w_hwio.dtype))


def _select(idx, table):
    from tvm import tirx

    expr = table[-1]
    for v in range(len(table) - 2, -1, -1):
        expr = tirx.Select(idx == v, table[v], expr)
    return expr


def _combine(terms, dtype):
    """sum(c * e) for small integer c, written as adds and subtracts."""
    from tvm import tirx

    out = None
    for c, e in terms:
        if c == 0:
            continue
        t = e if c == 1 else (-e if c == -1 else e * tirx.const(c, dtype))
        out = t if out is None else out + t
    return out if out is not None else tirx.const(0, dtype)


def winograd_te(x, u, mr: int):
    """NHWC input x [N, H, W, CI] (unpadded; pad 1), U [4, 4, CO/nr, CI, nr] -> [N, H, W, CO].

    Tiles are padded per image to a multiple of mr (the gemm's rows) by repeating the last
    tile, so the gemm's inner loop has no bounds tests."""
    from tvm import te, tirx, topi

    n_, h, w, ci = x.shape
    nr = int(u.shape[4])
    co = int(u.shape[2]) * nr
    h, w = int(h), int(w)
    nh, nw = (h + 1) // 2, (w + 1) // 2
    tiles = nh * nw
    padded = -(-tiles // mr) * mr
    dtype = x.dtype
    xp = topi.nn.pad(x, (0, 1, 1, 0), (0, 2 * nh + 1 - h, 2 * nw + 1 - w, 0), name="wino_pad")

    def pack(e, n, b, p, c):
        p = tirx.min(p, tiles - 1)
        th, tw = p // nw, p % nw

        def d(i, j):
            return xp[b, th * 2 + i, tw * 2 + j, c]

        return _select(e, [_select(n, [_combine([(_BT[ev][i] * _BT[nv][j], d(i, j)) for i in range(4) for j in range(4)], dtype)
                                      for nv in range(4)]) for ev in range(4)])

    v = te.compute((4, 4, n_, padded, ci), pack, name="wino_pack")
    k = te.reduce_axis((0, ci), name="k")
    m = te.compute((4, 4, n_, padded, co),
                   lambda e, n, b, p, c: te.sum(v[e, n, b, p, k] * u[e, n, c // nr, k, c % nr], axis=k),
                   name="wino_gemm", attrs={TILE_ATTR: [mr, nr]})

    def out(b, y, xx, c):
        p = (y // 2) * nw + xx // 2
        rows = [_select(xx % 2, [_combine([(_AT[a][e] * _AT[bb][n], m[e, n, b, p, c]) for e in range(4) for n in range(4)], dtype)
                                 for bb in range(2)]) for a in range(2)]
        return _select(y % 2, rows)

    return te.compute((n_, h, w, co), out, name="wino_out")


def use_winograd(min_width: int = 4, rows: int = 6):
    """Relax pass: stride-1 pad-1 3x3 convs on maps at least min_width wide -> call_tir of
    winograd_te with the weights transformed here, once."""
    def rewrite(bb, call, info):
        strides, padding, hw, weights = info
        if (strides != [1, 1] or padding != [1, 1, 1, 1] or list(weights.shape[:2]) != [3, 3]
                or weights.shape[3] % 4 or min(hw) < min_width):
            return None
        nr = next(n for n in (16, 8, 4) if weights.shape[3] % n == 0)
        mr = tile_rows(((hw[0] + 1) // 2) * ((hw[1] + 1) // 2), rows)
        from tvm import relax

        u = relax.const(weight_transform(weights, nr))
        return bb.call_te(winograd_te, call.args[0], u, mr, primfunc_name_hint="conv2d_winograd")

    return conv_rewrite_pass("EdgebundleWinograd", rewrite)


def winograd_rule(params):
    """Schedule for a PrimFunc holding the four wino_* blocks plus any elementwise epilogue:
    padding parallel over rows; the input transform per tile with its 4x4 outputs unrolled
    and channels vectorised; the gemm as MR x NR register tiles (NR = the weight panel
    width) parallel over (e, n, column panel, row tile); the output transform per 2x2 block
    with the epilogue inlined into it. The batch (symbolic in our exports) stays a serial
    outer loop: fused into the parallel loop, its symbolic strides cost 20-40% per kernel."""
    from tvm import s_tir

    from .cpu import _const_int

    def _schedule(func):
        sch = s_tir.Schedule(func)
        found = named_blocks(sch, BLOCKS)
        if found is None:
            return None
        pad, pack, gemm, out = found
        vec = params.vector
        if not inline_epilogue(sch, out):
            return None

        loops = sch.get_loops(pad)
        sch.parallel(loops[1])
        vectorize_inner(sch, loops[3], vec)

        e, n, b, p, c = sch.get_loops(pack)
        sch.reorder(b, p, c, e, n)
        sch.parallel(p)
        if (_const_int(sch.get(c).extent) or 1) % vec == 0:
            co_, ci = sch.split(c, [None, vec])
            sch.reorder(co_, e, n, ci)
            sch.vectorize(ci)
        sch.unroll(e)
        sch.unroll(n)

        schedule_gemm(sch, gemm, rows_outer=False, cols=params.gemm_nr, vector=params.vector)

        b, y, x, c = sch.get_loops(out)
        yo, yi = sch.split(y, [None, 2])
        xo, xi = sch.split(x, [None, 2])
        width = next(v for v in (vec, 4, 1) if (_const_int(sch.get(c).extent) or 1) % v == 0)
        co_, ci = sch.split(c, [None, width])
        sch.reorder(b, yo, xo, co_, yi, xi, ci)
        sch.parallel(yo)
        sch.unroll(yi)
        sch.unroll(xi)
        sch.vectorize(ci)
        return sch

    return cpu_rule("EdgebundleCPUWinograd", _schedule)
