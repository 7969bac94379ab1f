"""Run what was built against PyTorch: in-process where the host can run it, under qemu
for other CPU architectures, on the GPU when there is one; otherwise say loudly it was not."""
from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

from builder.compiler.targets import TargetSpec
from builder.local import sandbox
from builder.model.families import ModelSpec
from builder.progress import Progress
from builder.validate.compare import compare, run_in_process
from builder.validate.emulated import can_emulate, run_emulated

# GPU kernels accumulate in another order than PyTorch's CPU kernels.
GPU_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}


def validate_target(tdir: Path, target: TargetSpec, spec: ModelSpec, refs, progress: Progress, library: str,
                    variant: str, timings: dict | None = None, gate: dict | None = None) -> dict:
    """Compare one variant with PyTorch; where the model runs in-process, also time it into
    `timings` (timing.json and build.json only: model.json and the bundles stay
    byte-identical across builds). A variant this machine's CPU cannot run is
    {"unvalidated": why}: the runtime never picks it unless forced. `gate` (quantized builds:
    {"inputs", "refs"}, builder/validate/accuracy.py) adds result["accuracy"] where the
    variant ran."""
    import runtime
    from runtime import cpu

    where = str(tdir / library)
    if target.host_can_run():
        lacks = cpu.missing(cpu.KINDS[variant], cpu.features())
        if lacks:
            reason = f"the build machine's CPU lacks {', '.join(lacks)}"
            progress.warn(f"{target.name} variant {variant}: not validated ({reason}); bundles never pick it "
                          f"unless {cpu.FORCE_ENV}={variant}: build on a machine with those features to validate it")
            return {"unvalidated": reason}
        with progress.step(f"validate {target.name} variant {variant} against PyTorch"):
            model = runtime.load(tdir, variant=variant)
            outputs = run_in_process(model, spec, where)
        accuracy = None
        if gate is not None:  # first: its table says more than the largest difference
            with progress.step(f"accuracy gate: {target.name} variant {variant} on {_rows(gate)} inputs"):
                accuracy = _gate(spec, gate, run_in_process(model, spec, where, gate["inputs"]), where, variant)
        result = compare(spec, refs, outputs, where)
        result["how"] = "in-process"
        if accuracy is not None:
            result["accuracy"] = accuracy
        if timings is not None:
            with progress.step(f"time {target.name} at batch 1 and {model.max_batch}"):
                timings.update(time_model(model))
    elif can_emulate(target):
        extra = gate["inputs"] if gate is not None else []
        # one emulated run (one staged sandbox) for validation and the gate
        outputs = run_emulated(tdir, target, spec.validation_inputs + extra, progress, variant=variant)
        outputs, gated = outputs[:len(spec.validation_inputs)], outputs[len(spec.validation_inputs):]
        accuracy = _gate(spec, gate, gated, where, variant) if gate is not None else None
        result = compare(spec, refs, outputs, where)
        if accuracy is not None:
            result["accuracy"] = accuracy
        from builder.validate.emulated import VARIANT_QEMU_CPU

        env = " ".join(f"{k}={v}" for k, v in {**sandbox.emulator_env(target.platform.name),
                                                **({"QEMU_CPU": VARIANT_QEMU_CPU[variant]}
                                                   if variant in VARIANT_QEMU_CPU else {})}.items())
        result["how"] = f"emulated ({target.platform.emulator}{', ' + env if env else ''})"
    elif target.device == "cuda" and platform.machine() == target.arch:
        try:
            model = runtime.load(tdir)
        except runtime.DeviceUnavailable as e:
            progress.warn(f"{target.name}: not validated here ({e}); run tests/gpu/check.py on a GPU machine")
            return {"skipped": str(e)}
        gpu_spec = dataclasses.replace(spec, tolerance=dict(GPU_TOLERANCE))
        with progress.step(f"validate {target.name} on the GPU against PyTorch (CPU)"):
            result = compare(gpu_spec, refs, run_in_process(model, spec, where), where)
        result["how"] = "on the GPU"
    else:
        emulator = target.platform.emulator
        reason = f"this host cannot run {target.name} code" + (
            f" (install qemu-user to validate {target.platform.name} under emulation with {emulator})"
            if target.device == "cpu" and emulator else "")
        progress.warn(f"{target.name}: not validated: {reason}")
        return {"skipped": reason}
    progress.info("    max|diff| vs PyTorch: " + ", ".join(f"{k} {v:.2e}" for k, v in result["max_abs_diff"].items()))
    if "accuracy" in result:
        from builder.validate.accuracy import summary

        progress.info("    accuracy gate: " + summary(result["accuracy"]))
    return result


def _rows(gate: dict) -> int:
    return sum(len(next(iter(a.values()))) for a in gate["inputs"])


def _gate(spec: ModelSpec, gate: dict, outputs: list[dict], where: str, variant: str) -> dict:
    """The gate's record for one variant; AccuracyError where it fails and means something."""
    from builder.validate.accuracy import check, evaluate

    name = spec.postprocessing.output
    index = [o.name for o in spec.outputs].index(name)
    record = evaluate(spec.postprocessing.kind, [r[index] for r in gate["refs"]], [o[name] for o in outputs],
                      gate.get("labels"), gate.get("unjudged"), gate.get("scheme", "int8"))
    check(record, where, variant)
    return record


def time_model(model) -> dict:
    """Latency at the longest compiled length, batch 1 and a full batch (best of a few
    runs): what `deploy` sizes a Lambda function's timeout from."""
    import os
    import time

    from runtime._tvm import available_cpus

    def best(rows: int, runs: int) -> float:
        item = model.sample_item(rows=rows)
        model.execute([item])  # paged in, pools allocated
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model.execute([item])
            times.append(time.perf_counter() - t0)
        return round(min(times) * 1000, 3)

    return {"batch1_ms": best(1, 5), "full_batch_ms": best(model.max_batch, 2), "max_batch": model.max_batch,
            "seq": model.seq_lengths[-1] if model.seq_lengths else None,
            "threads": int(os.environ.get("TVM_NUM_THREADS") or available_cpus()), "host": platform.machine()}
