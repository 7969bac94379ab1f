"""Register-tiled GEMMs on CPU targets.

- `contraction_rule`: TVM's own contractions, matmul / dense / batch matmul / conv2d (NHWC x
  HWIO), as C[S,I,J] += A[S,I,K]*B[S,J,K]: an MR x NR register tile of outputs (NR = one or
  two vectors), the reduction unrolled by KU, parallel outer loops, the fused epilogue (bias,
  GELU, residual, BatchNorm scale/shift, ReLU) computed per tile, and constant weights
  packed to [N/NR, K..., NR] once at compile time. `choose_tile` picks the tile from the
  loop kinds and extents alone; the rule then applies it (as dlight's GPU rules keep
  get_configs apart from apply).
- `schedule_gemm`: the GEMM block of our Winograd and packed-input conv computes, which pad
  the row count so every tile is whole: C[..., P, CO] += A[..., P, K] * B.
"""
from __future__ import annotations

import dataclasses

from .common import const_int, cpu_rule, divisor, parallel_nest, vectorize_columns

__all__ = ["TILE_ATTR", "Tile", "choose_tile", "contraction_rule", "reads_panel", "schedule_gemm", "tile_rows"]

# The block annotation our computes put on their GEMM: (MR, NR), the register tile they padded
# the rows and packed the weights for.
TILE_ATTR = "edgebundle.tile"


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


def schedule_gemm(sch, block, rows_outer: bool = True, cols: int = 0, vector: int = 8) -> None:
    """Loops [*lead, p, c, k]: MR x NR tiles over (p, c), the reduction inside, rows unrolled
    and columns vectorised; the static lead loops and the tile loops fused and parallel.
    A symbolic lead loop (the batch) stays serial and outermost: fused into the parallel
    loop, its symbolic strides cost 20-40% per kernel. rows_outer: a tile's rows stay in L1
    while the weight panels stream past (1x1 convs, 0.52 vs 0.61 ms on 14x14x1024->256);
    otherwise a weight panel stays while the rows stream past. cols: the tile's columns, a
    multiple of the weight panel the compute was packed for (0: one panel); each panel's
    part is a contiguous load."""
    mr, nr = (int(v) for v in sch.get(block).annotations[TILE_ATTR])
    *lead, p, c, k = sch.get_loops(block)
    extent = const_int(sch.get(c).extent)
    width = cols if cols and cols % nr == 0 and extent is not None and extent % cols == 0 else nr
    serial = [l for l in lead if const_int(sch.get(l).extent) is None]
    par = [l for l in lead if const_int(sch.get(l).extent) is not None]
    po, pi = sch.split(p, [None, mr])
    co, ci = sch.split(c, [None, width])
    tiles = [po, co] if rows_outer else [co, po]
    sch.reorder(*serial, *par, *tiles, k, pi, ci)
    sch.parallel(sch.fuse(*par, *tiles))
    sch.unroll(pi)
    vectorize_columns(sch, ci, width, nr, vector)
    sch.decompose_reduction(block, k)


@dataclasses.dataclass(frozen=True)
class Tile:
    """A contraction's register tile: mr rows (its last I loop) x nr columns (J), the
    reduction's last loop unrolled by ku, and the width of the panels a constant weight is
    packed to; pack: the extents allow packing (the rule still checks how B is indexed)."""

    mr: int
    nr: int
    ku: int
    panel: int
    pack: bool


def choose_tile(kinds: list[str], extents: list, a_shape: list, b_rank: int, p) -> Tile:
    """The tile of a contraction from numbers only: its loops' kinds (see _classify) and
    static extents (None: symbolic), A's static dims, B's rank and the CpuParams p."""
    i_ext = [e for e, k in zip(extents, kinds) if k == "I"]
    k_ext = [e for e, k in zip(extents, kinds) if k == "K"]
    (n,) = [e for e, k in zip(extents, kinds) if k == "J"]
    # A conv's weight is HWIO (4-D, also for 1x1 convs); a dense weight is 2-D whatever
    # the rank of its input (a 3-D Linear has two I loops, like a conv's h and w).
    is_conv = b_rank > 2 and "S" not in kinds
    want_mr, want_nr = (p.conv_mr, p.conv_nr) if is_conv else (p.mr, p.nr)
    ku = p.ku
    if is_conv and i_ext:
        out_w = i_ext[-1]
        # stride 1: the (padded) input row is at most kernel - 1 wider than the output
        stride1 = out_w is not None and a_shape[-2] is not None and a_shape[-2] < 2 * out_w
        if out_w is not None and out_w % p.spatial_mr == 0 and len(k_ext) > 1 and stride1:
            want_mr, want_nr, ku = p.spatial_mr, p.spatial_nr, p.spatial_ku
        elif out_w is not None and out_w == p.narrow_mr:
            want_mr, want_nr, ku = p.narrow_mr, p.narrow_nr, p.narrow_ku
    panel, nr = _panel_and_tile(n, p.conv_panel if is_conv else p.dense_panel, want_nr, p.vector)
    # Rows that divide the extent: a partial tile's predicates cost more than a few
    # spilled accumulators (measured on ResNet50's 7- and 14-wide feature maps).
    mr = divisor(i_ext[-1], (want_mr, 4, 8, 7, 6, 5, 3, 2)) if i_ext else 1
    pack = p.pack and "S" not in kinds and n is not None and n % nr == 0 and n % panel == 0
    return Tile(mr=mr, nr=nr, ku=divisor(k_ext[-1], (ku, 2)), panel=panel, pack=pack)


def _panel_and_tile(n, shared: int, want: int, vector: int) -> tuple[int, int]:
    """(weight panel width, tile columns) for N output columns. The panel depends on N and
    the shared width only, so every variant packs a weight alike; the tile is the first of
    the variant's choices dividing N that reads whole panels or whole parts of one.
    (ResNet50's 1000 classes keep 8-wide panels: a 40-wide one, read whole at batch 1, ran
    its classifier faster alone but slower in the model, 0.99 vs 0.46 ms AVX2, 0.61 vs
    0.52 AVX-512, Zen 5.)"""
    own = next((c for c in (want, 2 * vector, vector) if n is not None and n % c == 0), vector)
    panel = next((c for c in (shared, 16, 8) if shared and n is not None and n % c == 0), None)
    if panel is None:  # not shared, or no panel fits: packed (or not) as the tile reads
        return own, own
    tiles = [c for c in (want, 2 * vector, vector, 8, 4) if n % c == 0]
    return panel, next((c for c in tiles if reads_panel(c, panel)), panel)


def reads_panel(tile: int, panel: int) -> bool:
    """Whether a tile of this many columns reads weight panels of this width whole or in
    equal parts (a multiple or a divisor of it): the tiles a shared panel admits."""
    return panel % tile == 0 or tile % panel == 0


def _classify(sch, block):
    """Kinds of the block's iter vars: S (in A, B and C), I (A and C), J (B and C), K
    (reduction), T (in no operand: extent 1). None when the block is not A*B summed."""
    from tvm import tirx

    stmt = sch.get(block)
    if len(stmt.reads) < 2 or len(stmt.writes) != 1:
        return None
    out = stmt.writes[0].source
    inputs = [r for r in stmt.reads if not r.source.same_as(out)]
    if len(inputs) != 2:
        return None

    def used(region):
        names = set()
        for rng in region.region:
            names.update(tirx.analysis.undefined_vars(rng.min))
        return names

    a_vars, b_vars = used(inputs[0]), used(inputs[1])
    kinds = []
    for iv in stmt.iter_vars:
        v = iv.var
        if iv.iter_type == tirx.IterVar.CommReduce:
            kinds.append("K")
        elif v in a_vars and v in b_vars:
            kinds.append("S")
        elif v in a_vars:
            kinds.append("I")
        elif v in b_vars:
            kinds.append("J")
        else:
            kinds.append("T")
    if "K" not in kinds or "J" not in kinds:
        return None
    return kinds, inputs


def _pads(stmt) -> bool:
    """Whether a producer block pads: it writes a buffer of the rank it reads, each dim equal
    or, both static, larger, one at least larger (conv padding). A copy (topi's zero-size pad
    of a 1x1 conv) or a transpose is inlined instead. Dims are compared as expressions: the
    batch is symbolic."""
    if len(stmt.writes) != 1 or len(stmt.reads) != 1:
        return False
    out, src = stmt.writes[0].source.shape, stmt.reads[0].source.shape
    if len(out) != len(src):
        return False
    larger = False
    for a, b in zip(out, src):
        if str(a) == str(b):
            continue
        a, b = const_int(a), const_int(b)
        if a is None or b is None or a < b or b == 1:  # b == 1: a broadcast, not padding
            return False
        larger = larger or a > b
    return larger


def _contraction(sch):
    """(block, its loops, their kinds, the A and B regions, the epilogue block or None) of a
    function whose one reduction is an A*B contraction, with its other blocks inlined
    (padding excepted); None for any other function."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    # Our own conv computes (wino_*, pc_*: their GEMM carries TILE_ATTR) have their rules:
    # this one's epilogue tiling cannot follow their flattened-pixel GEMMs (a parallel tile
    # would read rows another thread has not written).
    if any(TILE_ATTR in sch.get(b.block_rv).annotations for b in infos):
        return None
    reductions = [b for b in infos if b.is_reduction()]
    if len(reductions) != 1:
        return None
    mm = reductions[0].block_rv
    found = _classify(sch, mm)
    if found is None:
        return None
    kinds, inputs = found
    loops = sch.get_loops(mm)
    if len(loops) != len(kinds):
        return None
    # Producers (padding) stay separate loops; consumers collapse into one epilogue.
    for b in infos:
        if b.block_rv.same_as(mm) or not b.is_injective():
            continue
        if (any(sch.get(c).same_as(sch.get(mm)) for c in sch.get_consumers(b.block_rv))
                and _pads(sch.get(b.block_rv))):
            continue  # padding: a separate pass keeps the bounds tests out of the inner loop
        try:
            sch.compute_inline(b.block_rv)
        except Exception:
            pass
    consumers = sch.get_consumers(mm)
    if consumers and (len(consumers) != 1 or sch.get_consumers(consumers[0])):
        return None
    return mm, loops, kinds, inputs, (consumers[0] if consumers else None)


def _pack_map(ndim: int, jpos: int, nr: int):
    """IndexMap B[..., j, ...] -> Bp[j // nr, ..., j % nr] (IndexMap.from_func binds every
    parameter of the lambda, so the constants are closed over, not defaulted)."""
    from tvm.tirx import IndexMap

    def imap(*idx):
        rest = [x for n, x in enumerate(idx) if n != jpos]
        return (idx[jpos] // nr, *rest, idx[jpos] % nr)

    return IndexMap.from_func(imap, ndim=ndim)


def _pack_weight(sch, mm, kinds, b_region, panel: int) -> bool:
    """A constant weight B[K..., J] packed to [J/panel, K..., J%panel] (contiguous panel-wide
    loads) once at compile time, when B is indexed by one J and K loop variables and constants
    (the size-1 kh, kw of a 1x1 conv); False (nothing done) otherwise."""
    from tvm import tirx

    stmt = sch.get(mm)
    b_index = [r.min for r in b_region.region]
    iv_kind = {iv.var: k for iv, k in zip(stmt.iter_vars, kinds)}
    if not all((isinstance(e, tirx.Var) and e in iv_kind) or const_int(e) is not None for e in b_index):
        return False
    names = [iv_kind[e] if isinstance(e, tirx.Var) else "1" for e in b_index]
    if names.count("J") != 1 or not all(n in ("J", "K", "1") for n in names):
        return False
    read_idx = [i for i, r in enumerate(stmt.reads) if r.source.same_as(b_region.source)][0]
    pk = sch.cache_read(mm, read_idx, "global")
    sch.transform_layout(mm, ("read", read_idx), _pack_map(len(b_index), names.index("J"), panel))
    sch.annotate(pk, "meta_schedule.layout_rewrite_preproc", True)
    return True


def _apply_tile(sch, mm, loops, kinds, tile: Tile, packed: bool, epi, p) -> None:
    """The loop transformations of a chosen tile: splits, parallel outer loops, unrolled and
    vectorised inner ones, the epilogue computed per tile, the reduction's init vectorised."""
    s_loops, i_loops, k_loops, t_loops = ([l for l, k in zip(loops, kinds) if k == kind] for kind in "SIKT")
    (j_loop,) = [l for l, k in zip(loops, kinds) if k == "J"]
    nr, panel = tile.nr, tile.panel
    if packed and nr < panel:  # tiles a divisor of the panel: j = (panel index, tile in panel, lane)
        jp, jm, ji = sch.split(j_loop, [None, panel // nr, nr])
        jo = [jp, jm]
    else:
        jo, ji = sch.split(j_loop, [None, nr])
        jo = [jo]
    if i_loops:
        io, ii = sch.split(i_loops[-1], [None, tile.mr])
        i_outer = [*i_loops[:-1], io]
    else:
        ii, i_outer = None, []
    ko, ki = sch.split(k_loops[-1], [None, tile.ku])
    k_outer = [*k_loops[:-1], ko]
    inner = [ki] + ([ii] if ii is not None else []) + [ji]
    # jo outside the row tiles: a packed weight panel stays in cache across rows.
    sch.reorder(*t_loops, *s_loops, *jo, *i_outer, *k_outer, *inner)
    outer = sch.fuse(*t_loops, *s_loops, *jo, *i_outer)
    sch.parallel(outer)
    vectorize_columns(sch, ji, nr, panel if packed and nr > panel else nr, p.vector)
    if ii is not None:
        sch.unroll(ii)
    sch.unroll(ki)
    if epi is None:
        epi = sch.cache_write(mm, 0, "global")
    sch.reverse_compute_at(epi, outer)
    sch.vectorize(sch.get_loops(epi)[-1])
    # Before the reduction is split: afterwards its init block is a producer too.
    producers = sch.get_producers(mm)
    init = sch.decompose_reduction(mm, k_outer[0])
    sch.vectorize(sch.get_loops(init)[-1])
    # Producers left as loops of their own (conv padding) would run on one thread.
    for producer in producers:
        if sch.get_loops(producer) and len(sch.get_loops(producer)) == len(sch.get(producer).iter_vars):
            parallel_nest(sch, producer, p)


def contraction_rule(params):
    """The dlight rule for TVM's contractions (module docstring), params: a CpuParams."""
    from tvm import s_tir

    def _schedule(func):
        sch = s_tir.Schedule(func)
        found = _contraction(sch)
        if found is None or found[2].count("J") != 1:
            return None
        mm, loops, kinds, (a_region, b_region), epi = found
        tile = choose_tile(kinds, [const_int(sch.get(l).extent) for l in loops],
                           [const_int(d) for d in a_region.source.shape], len(b_region.region), params)
        packed = tile.pack and _pack_weight(sch, mm, kinds, b_region, tile.panel)
        _apply_tile(sch, mm, loops, kinds, tile, packed, epi, params)
        return sch

    return cpu_rule("EdgebundleCPUContraction", _schedule)
