"""Winograd F(2x2, 3x3) and F(4x4, 3x3) for stride-1 3x3 convs on CPU targets.

Each 2x2 block of outputs comes from a 4x4 input tile through 16 independent channel
contractions instead of 36 multiply-adds per channel pair: 2.25x fewer FLOPs, at the cost of
two cheap transforms and transformed weights 16/9 the size. On ResNet50's 3x3 convs
(2 threads, Zen 2) the scheduled kernels ran 0.58 vs 1.14 ms (14x14x256), 0.61 vs 1.29 ms
(28x28x128), 0.63 vs 1.35 ms (56x56x64) and 1.17 vs 1.61 ms (7x7x512) against the direct
14x8-tile conv. F(4x4, 3x3) makes each 4x4 block from a 6x6 tile: 4x fewer FLOPs than
direct, but its weights are 4x the size (36/9) and its transforms scale values by up to 8
(fp32 error ~1e-6 relative), so it is taken only on wide maps with few channels
(`winograd_f4_min_width`), where the GEMM dominates and the weights are small.

- `use_winograd()`: a Relax pass, after ConvertLayout and FoldConstant, turning
  conv2d(NHWC x HWIO, 3x3, stride 1, dilation 1, pad 1, constant weight, CO a multiple of
  4, maps at least 4 wide) into a call_tir of the compute below, with the weight transform
  (G g G^T) done once at compile time.
- `winograd_rule()`: the schedule of that compute (and of the epilogue FuseOps adds to it).
"""
from __future__ import annotations

import numpy as np

from .common import const_int, conv_rewrite_pass, cpu_rule, inline_epilogue, named_blocks, vectorize_inner
from .gemm import TILE_ATTR, schedule_gemm, tile_rows
from .storage import narrow, widen

# F(m x m, 3x3) (Lavin & Gray): Y = A^T [(G g G^T) . (B^T d B)] A, per output tile size m.
# F(2x2): interpolation points 0, 1, -1, inf; only adds, subtracts and halves.
# F(4x4): points 0, 1, -1, 2, -2, inf; values scaled by up to 8 (fp32 error ~1e-6 relative).
_MATRICES = {
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
         (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0.0, 0.0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
         (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0.0, 0.0, 1.0)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}

BLOCKS = ("wino_pad", "wino_pack", "wino_gemm", "wino_out")


def weight_transform(w_hwio: np.ndarray, nr: int, m: int = 2) -> np.ndarray:
    """HWIO 3x3 weights -> U[a, a, CO/nr, CI, nr] (a = m + 2; the gemm's weight panels, nr wide)."""
    g = np.asarray(_MATRICES[m][1], np.float64)
    a = g.shape[0]
    u = np.einsum("ei,ijco,nj->enco", g, w_hwio.astype(np.float64), g)
    ci, co = w_hwio.shape[2], w_hwio.shape[3]
    u = u.reshape(a, a, ci, co // nr, nr).transpose(0, 1, 3, 2, 4)
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
    """NHWC input x [N, H, W, CI] (unpadded; pad 1), U [a, a, CO/nr, CI, nr] -> [N, H, W, CO],
    in m x m output tiles (a = m + 2: U's leading extent says which F(m x m, 3x3)).

    Tiles are padded per image to a multiple of mr (the gemm's rows) by repeating the last
    tile, so the gemm's inner loop has no bounds tests."""
    from tvm import te, tirx, topi

    n_, h, w, ci = x.shape
    a = int(u.shape[0])
    m = a - 2
    bt, _, at = _MATRICES[m]
    nr = int(u.shape[4])
    co = int(u.shape[2]) * nr
    h, w = int(h), int(w)
    nh, nw = -(-h // m), -(-w // m)
    tiles = nh * nw
    padded = -(-tiles // mr) * mr
    dtype = x.dtype
    xp = topi.nn.pad(x, (0, 1, 1, 0), (0, m * nh + 1 - h, m * nw + 1 - w, 0), name="wino_pad")

    def pack(e, n, b, p, c):
        p = tirx.min(p, tiles - 1)
        th, tw = p // nw, p % nw

        def d(i, j):
            return xp[b, th * m + i, tw * m + j, c]

        return _select(e, [_select(n, [_combine([(bt[ev][i] * bt[nv][j], d(i, j)) for i in range(a) for j in range(a)], dtype)
                                      for nv in range(a)]) for ev in range(a)])

    v = te.compute((a, a, n_, padded, ci), pack, name="wino_pack")
    k = te.reduce_axis((0, ci), name="k")
    prod = te.compute((a, a, n_, padded, co),
                      lambda e, n, b, p, c: te.sum(v[e, n, b, p, k] * widen(u[e, n, c // nr, k, c % nr]), axis=k),
                      name="wino_gemm", attrs={TILE_ATTR: [mr, nr]})

    def out(b, y, xx, c):
        p = (y // m) * nw + xx // m
        rows = [_select(xx % m, [_combine([(at[r][e] * at[col][n], prod[e, n, b, p, c]) for e in range(a) for n in range(a)], dtype)
                                 for col in range(m)]) for r in range(m)]
        return _select(y % m, rows)

    return te.compute((n_, h, w, co), out, name="wino_out")


def use_winograd(min_width: int = 4, rows: int = 6, f4_min_width: int = 0, storage: str = "fp32"):
    """Relax pass: stride-1 pad-1 3x3 convs on maps at least min_width wide -> call_tir of
    winograd_te with the weights transformed here, once. Maps at least f4_min_width wide
    (0: none) whose sides are multiples of 4 take F(4x4, 3x3): 36 products per 16 outputs
    instead of 16 per 4, at 36/16 the F(2x2) weights, so only where the weights are small
    (ResNet50's 56- and 28-wide stages: 8.8 instead of 3.9 MB). The F(2x2) transformed
    weights are stored as `storage` (schedules/storage.py); F(4x4)'s stay fp32."""
    def rewrite(bb, call, info):
        strides, padding, hw, weights = info
        if (strides != [1, 1] or padding != [1, 1, 1, 1] or list(weights.shape[:2]) != [3, 3]
                or weights.shape[3] % 4 or min(hw) < min_width):
            return None
        wide = f4_min_width and min(hw) >= f4_min_width
        m = 4 if wide and hw[0] % 4 == 0 and hw[1] % 4 == 0 else 2
        nr = next(n for n in (16, 8, 4) if weights.shape[3] % n == 0)
        mr = tile_rows(-(-hw[0] // m) * -(-hw[1] // m), rows)
        from tvm import relax

        u = weight_transform(weights, nr, m)
        # F(4x4)'s output transform (entries up to 8) magnifies its weights' rounding: stored
        # narrow, a conv's error was 20x that of the weights rounded alone (6e-3 vs 2.7e-4
        # fp16, 5e-2 vs 2.6e-3 bf16; F(2x2)'s 4.8e-4 and 3.7e-3). Its weights (few channels)
        # stay fp32.
        u = relax.const(u if m == 4 else narrow(u, storage))
        return bb.call_te(winograd_te, call.args[0], u, mr, primfunc_name_hint="conv2d_winograd")

    return conv_rewrite_pass("EdgebundleWinograd", rewrite)


def winograd_rule(params):
    """Schedule for a PrimFunc holding the four wino_* blocks plus any elementwise epilogue:
    padding parallel over rows; the input transform per tile with its a x a outputs unrolled
    and channels vectorised; the gemm as MR x NR register tiles (NR = the weight panel
    width) parallel over (e, n, column panel, row tile); the output transform per m x m block
    with the epilogue inlined into it. The batch (symbolic in our exports) stays a serial
    outer loop: fused into the parallel loop, its symbolic strides cost 20-40% per kernel."""
    from tvm import s_tir

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
        if (const_int(sch.get(c).extent) or 1) % vec == 0:
            co_, ci = sch.split(c, [None, vec])
            sch.reorder(co_, e, n, ci)
            sch.vectorize(ci)
        sch.unroll(e)
        sch.unroll(n)

        schedule_gemm(sch, gemm, rows_outer=False, cols=params.gemm_nr, vector=params.vector)

        b, y, x, c = sch.get_loops(out)
        m = int(sch.get(gemm).iter_vars[0].dom.extent) - 2  # the tile size: a = m + 2
        yo, yi = sch.split(y, [None, m])
        xo, xi = sch.split(x, [None, m])
        width = next(v for v in (vec, 4, 1) if (const_int(sch.get(c).extent) or 1) % v == 0)
        co_, ci = sch.split(c, [None, width])
        sch.reorder(b, yo, xo, co_, yi, xi, ci)
        sch.parallel(yo)
        sch.unroll(yi)
        sch.unroll(xi)
        sch.vectorize(ci)
        return sch

    return cpu_rule("EdgebundleCPUWinograd", _schedule)
