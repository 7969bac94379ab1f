"""`edgebundle tune`: a small search over our CPU rules' parameters (tile shapes) for one
model and target, timed in-process, written to a JSON database that `build --tuning-db`
applies without re-tuning. MetaSchedule is unusable in apache-tvm 0.27.0.post1."""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from builder.errors import EdgebundleError
from builder.options import DEFAULT_SEQ_LEN, BuildOptions
from builder.progress import Progress

# Dense tiles must read the shared 48-wide weight panels whole or in equal parts (a divisor
# or a multiple of 48): others would fall back to narrower tiles than the candidate names.
DENSE_TILES = [(4, 24), (4, 16), (2, 48), (8, 8), (6, 16)]
CONV_TILES = [(2, 32), (4, 16), (1, 32), (4, 32)]
# Per variant, where its registers admit other tiles: AVX-512's 32 registers of 16 lanes.
VARIANT_TILES = {
    "avx512": {"dense": [(8, 48), (4, 48), (4, 96), (8, 24), (8, 16)],
               "gemm": [(12, 32), (8, 32), (6, 32), (12, 16), (6, 64)]},
}
# The conv rewrites trade weight bytes for FLOPs (Winograd's transformed weights are 16/9
# the size, F(4x4)'s 4x): where memory bandwidth is short, fewer of them can win.
CONV_CHOICES = [{"winograd_min_width": 8}, {"winograd_f4_min_width": 0}, {"winograd": False}, {"packed_conv": False}]


def _latency_ms(mod, tvm_target: dict, params, inputs: list, runs: int, storage: str = "fp32") -> float:
    import tvm
    from tvm import relax

    from builder.compiler.schedules.cpu import cpu_pipeline

    target = tvm.target.Target(tvm_target)
    ex = tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, params, storage=storage))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs]
    vm["main"](*args)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        vm["main"](*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def tune(model: str, *, target: str = "x86_64", out: Path, seq_len: int = DEFAULT_SEQ_LEN, runs: int = 10,
         cpu: str | None = None, variant: str | None = None, weights: str = BuildOptions.weights,
         progress: Progress | None = None) -> dict:
    """Tune one variant of the target (default: its baseline, or the --cpu one), timing kernels
    that read the weights stored as `weights` (as the build will ship them); the build
    applies the database to the variant compiled for the same TVM target."""
    progress = progress or Progress()
    import os

    from runtime._tvm import available_cpus

    # TVM's pool is sized once, from this variable, when first used; unset it is 1 thread
    # on small machines, which would tune for the wrong machine.
    os.environ.setdefault("TVM_NUM_THREADS", str(available_cpus()))
    from builder.compiler.export import to_relax
    from builder.model.families import detect_family
    from builder.model.families.base import one_request, read_json
    from builder.compiler.schedules.cpu import CpuParams
    from builder.model.source import model_record, resolve_model
    from builder.options import BuildOptions
    from builder.compiler.targets import TARGETS

    spec_t = TARGETS[target]
    if not spec_t.host_can_run():
        raise EdgebundleError(f"tune times code on this host; {target} code cannot run here",
                              hint="tune on a machine of the target's architecture")
    model_dir = resolve_model(model)
    config = read_json(model_dir / "config.json", "config.json")
    fam = detect_family(config, model_dir)
    # One sequence length: tuning times the longest, the one that matters most.
    spec = fam.load(model_dir, config, fam.default_task(config),
                    BuildOptions(seq_len=seq_len, seq_buckets=(seq_len,)))
    with progress.step("torch.export + import into TVM Relax"):
        mod = to_relax(spec)
    arrays = one_request(spec)
    inputs = [arrays[i.name] for i in spec.inputs]
    variants = spec_t.variants(cpu)
    chosen = next((v for v in variants if v.name == variant), None) if variant else variants[0]
    if chosen is None:
        raise EdgebundleError(f"target {target} has no variant {variant!r}" + (" with --cpu" if cpu else ""),
                              hint=f"choose from {', '.join(v.name for v in variants)}")
    from runtime import cpu as cpu_features

    lacks = cpu_features.missing(cpu_features.KINDS[chosen.name], cpu_features.features())
    if lacks:
        raise EdgebundleError(f"tune times code on this host, whose CPU lacks {', '.join(lacks)} (variant "
                              f"{chosen.name} needs them)", hint="tune on a machine that has them")
    tvm_target = spec_t.tvm_target_json(chosen.cpu, (), chosen.attrs)
    has_conv = "conv2d" in mod.script(show_meta=False)

    tried = []

    def measure(params: CpuParams) -> float:
        with progress.step(f"compile + time {dataclasses.asdict(params)}"):
            ms = _latency_ms(mod, tvm_target, params, inputs, runs, weights)
        tried.append({"params": dataclasses.asdict(params), "median_ms": ms})
        progress.info(f"    {ms:.2f} ms")
        return ms

    # Coordinate search: dense tiles with the default conv tiles, then conv tiles, then
    # which convs go Winograd / packed.
    from builder.compiler.schedules.cpu import params_from_env, reads_panel

    default = params_from_env(chosen.name)
    tiles = VARIANT_TILES.get(chosen.name, {})
    best, best_ms = default, measure(default)
    baseline = best_ms
    for mr, nr in tiles.get("dense", DENSE_TILES):
        if default.dense_panel and not reads_panel(nr, default.dense_panel):
            continue
        cand = dataclasses.replace(best, mr=mr, nr=nr)
        if cand != best and (ms := measure(cand)) < best_ms:
            best, best_ms = cand, ms
    if has_conv:
        for change in ([{"conv_mr": mr, "conv_nr": nr} for mr, nr in CONV_TILES]
                       + [{"gemm_mr": mr, "gemm_nr": nr} for mr, nr in tiles.get("gemm", [])] + CONV_CHOICES):
            cand = dataclasses.replace(best, **change)
            if cand != best and (ms := measure(cand)) < best_ms:
                best, best_ms = cand, ms
    db = {"schema": 1, "target": tvm_target, "variant": chosen.name, "threads": int(os.environ["TVM_NUM_THREADS"]), "model": {**model_record(model_dir), "family": fam.name},
          "params": dataclasses.asdict(best), "default_ms": baseline, "best_ms": best_ms,
          "gain": baseline / best_ms, "candidates": tried,
          "date": time.strftime("%Y-%m-%d %H:%M")}
    Path(out).write_text(json.dumps(db, indent=2) + "\n")
    verdict = ("worth it" if db["gain"] >= 1.10 else "under 10%: the defaults are fine for this model")
    progress.info(f"tune: default {baseline:.1f} ms -> best {best_ms:.1f} ms ({db['gain']:.2f}x, {verdict}); wrote {out}")
    return db
