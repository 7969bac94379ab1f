"""Kernel-level checks of the CPU schedules: every scheduled PrimFunc against its
unscheduled self on random inputs, and per-kernel timings (where the time goes)."""
from __future__ import annotations

import time

import os

import numpy as np

_DEBUG = bool(os.environ.get("EDGEBUNDLE_SCHEDULE_DEBUG"))


def fused_module(mod, target, params=None):
    """The Relax module after legalization and fusion, before scheduling (what the rules see)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cg

    from builder.compiler.schedules.cpu import pre_legalize_passes

    with target:
        return tvm.transform.Sequential([*pre_legalize_passes(params), *cg.library_dispatch_passes(target),
                                         *cg.legalize_passes(target)])(mod)


def _is_buffer(param) -> bool:
    # TVM 0.27: buffer parameters are Vars whose type is a BufferType (no buffer_map).
    return type(param.ty).__name__ == "BufferType"


def _random_args(func, rng, symbol_value: int):
    """Arguments for every parameter: random tensors with symbolic dims bound to
    symbol_value, and symbol_value for scalar (shape) parameters."""
    import tvm
    from tvm import sym as arith  # TVM 0.27 renamed tvm.arith
    from tvm import tirx

    ana = arith.Analyzer()
    for p in func.params:
        for dim in (p.shape if _is_buffer(p) else [p]):
            for v in tirx.analysis.undefined_vars(dim) if not isinstance(dim, int) else []:
                ana.bind(v, symbol_value)
    args = []
    for p in func.params:
        if not _is_buffer(p):
            args.append(symbol_value)
            continue
        shape = [int(ana.simplify(d)) for d in p.shape]
        dt = str(p.dtype)
        if dt.startswith("float"):
            a = rng.standard_normal(shape).astype(dt)
        elif dt == "bool":
            a = rng.integers(0, 2, shape).astype(bool)
        else:  # integer tensors index tables: keep them small and non-negative
            a = rng.integers(0, 2, shape).astype(dt)
        args.append(tvm.runtime.tensor(a))
    return args


def check_kernels(mod, target, params=None, symbol_value: int = 1, time_runs: int = 0, seed: int = 0,
                  time_base: bool = True) -> list[dict]:
    """For each PrimFunc a rule schedules: build it scheduled and unscheduled, run both on
    the same random inputs, report the max difference relative to the output's scale
    (and timings if time_runs)."""
    import tvm
    from tvm import tirx

    from builder.compiler.schedules.cpu import cpu_rules

    fused = fused_module(mod, target, params)
    rules = cpu_rules(params)
    report = []
    with target:
        for gvar, func in fused.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            rule, sch = None, None
            for r in rules:
                sch = r.apply(func, target, False)
                if sch is not None:
                    rule = r.name if hasattr(r, "name") else type(r).__name__
                    break
            if sch is None:
                report.append({"kernel": gvar.name_hint, "rule": None})
                continue
            base, sched = func, sch.mod["main"]
            row = {"kernel": gvar.name_hint, "rule": rule}
            if _DEBUG:
                print("check", gvar.name_hint, rule, flush=True)
            outs = []
            for f in (base, sched):
                lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)
                args = _random_args(f, np.random.default_rng(seed), symbol_value)
                lib["main"](*args)
                outs.append(args)
                if time_runs and (time_base or f is not base):
                    t0 = time.perf_counter()
                    for _ in range(time_runs):
                        lib["main"](*args)
                    row["ms_" + ("base" if f is base else "scheduled")] = (time.perf_counter() - t0) / time_runs * 1e3
            # Outputs are the last buffer parameters; compare every float buffer.
            diff = 0.0
            for a, b in zip(*outs):
                if isinstance(a, int):
                    continue
                x, y = a.numpy(), b.numpy()
                if x.dtype.kind == "f" and x.size:
                    # relative to the output's scale: random weights make some outputs large
                    scale = max(1.0, float(np.max(np.abs(x))))
                    diff = max(diff, float(np.max(np.abs(x - y))) / scale)
            row["max_rel_diff"] = diff
            report.append(row)
    return report
