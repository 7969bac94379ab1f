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


def validate_target(tdir: Path, target: TargetSpec, spec: ModelSpec, refs, progress: Progress, library: str) -> dict:
    import runtime

    where = str(tdir / library)
    if target.host_can_run():
        with progress.step(f"validate {target.name} against PyTorch"):
            result = compare(spec, refs, run_in_process(runtime.load(tdir), spec, where), where)
        result["how"] = "in-process"
    elif can_emulate(target):
        outputs = run_emulated(tdir, target, spec.validation_inputs, progress)
        result = compare(spec, refs, outputs, where)
        env = " ".join(f"{k}={v}" for k, v in sandbox.emulator_env(target.platform.name).items())
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
    return result
