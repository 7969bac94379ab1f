"""Run a compiled module for another architecture under emulation (qemu-user + a Debian
root filesystem with the bundle's Python), through the same runtime/ and manylinux wheels a
bundle ships: how an arm64 build is validated against PyTorch on an x86_64 host."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import sandbox
from .errors import ValidationError
from .formats.common import stage_bundle
from .progress import Progress

EMULATION_PYTHON = "3.13"

_SCRIPT = """
import sys
stage, inputs, outputs = sys.argv[1:4]
sys.path.insert(0, stage)
import numpy as np
import runtime
model = runtime.load(stage)
data = np.load(inputs)
result = {}
for i in range(int(data["count"])):
    arrays = {spec["name"]: data[f"{i}/{spec['name']}"] for spec in model.inputs}
    for name, value in model.run(arrays).items():
        result[f"{i}/{name}"] = value
np.savez(outputs, **result)
"""


def can_emulate(target) -> bool:
    return target.device == "cpu" and sandbox.normalize_arch(target.arch) == "arm64" and sandbox._qemu() is not None


def run_emulated(target_dir: Path, target, input_sets: list[dict], progress: Progress,
                 timeout_s: float = 3600) -> list[dict]:
    manifest = json.loads((Path(target_dir) / "model.json").read_text())
    arch = sandbox.normalize_arch(target.arch)
    with tempfile.TemporaryDirectory(prefix="edgebundle-emulate-") as tmp:
        tmp = Path(tmp)
        stage = tmp / "stage"
        stage.mkdir()
        stage_bundle(stage, target_dir, manifest, target, EMULATION_PYTHON, progress)
        arrays = {f"{i}/{k}": v for i, s in enumerate(input_sets) for k, v in s.items()}
        np.savez(tmp / "inputs.npz", count=np.array(len(input_sets)), **arrays)
        argv, paths = sandbox.python_command(EMULATION_PYTHON, arch, progress)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), **sandbox.EMULATOR_ENV.get(arch, {})}
        with progress.step(f"run {target.name} module under emulation (qemu, {env.get('QEMU_CPU', 'default cpu')})"):
            proc = subprocess.run(
                argv + ["-c", _SCRIPT, paths.to_sandbox(stage), paths.to_sandbox(tmp / "inputs.npz"),
                        paths.to_sandbox(tmp / "outputs.npz")],
                env=env, cwd=str(tmp), capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            tail = "\n    ".join(proc.stderr.strip().splitlines()[-12:])
            raise ValidationError(f"the {target.name} module failed under emulation (exit {proc.returncode}):\n    {tail}",
                                  where=str(Path(target_dir) / manifest["library"]),
                                  hint="an illegal instruction means code the target CPU lacks (check --cpu)")
        data = np.load(tmp / "outputs.npz")
        return [{spec["name"]: data[f"{i}/{spec['name']}"] for spec in manifest["outputs"]}
                for i in range(len(input_sets))]
