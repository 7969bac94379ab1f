"""Run a compiled module for another architecture under emulation (qemu-user + a Debian
root filesystem with the bundle's Python), through the same runtime/ and manylinux wheels a
bundle ships: how an arm64 build is validated against PyTorch on an x86_64 host."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from builder.local import sandbox
from builder.errors import ValidationError
from builder.bundle.stage import stage_bundle
from builder.options import DEFAULT_PYTHON
from builder.platforms import host_arch
from builder.progress import Progress
from runtime.manifest import read as read_manifest

# The bundles' default Python: what an emulated validation runs is what ships.
EMULATION_PYTHON = DEFAULT_PYTHON

# Raw tensor files + a JSON index: the bundle has no numpy to read .npz with.
_SCRIPT = """
import json, sys
stage, index_path, out_dir = sys.argv[1:4]
sys.path.insert(0, stage)
import runtime
from runtime.arrays import read_raw
model = runtime.load(stage)
index = json.load(open(index_path))
written = []
for i, tensors in enumerate(index):
    outs = {}
    for name, view in model.run(read_raw(tensors)).items():
        path = f"{out_dir}/{i}-{name}.bin"
        open(path, "wb").write(view.tobytes())
        outs[name] = [path, view.format, list(view.shape)]
    written.append(outs)
json.dump(written, open(f"{out_dir}/index.json", "w"))
"""


def write_raw(arrays: dict, folder: Path, prefix: str) -> dict:
    """Arrays as raw C-order files folder/<prefix><name>.bin; returns the index that
    runtime.arrays.read_raw reads ({name: [file, dtype, shape]})."""
    index = {}
    for name, value in arrays.items():
        value = np.ascontiguousarray(value)
        path = folder / f"{prefix}{name}.bin"
        path.write_bytes(value.tobytes())
        index[name] = [str(path), str(value.dtype), list(value.shape)]
    return index


def can_emulate(target) -> bool:
    """A CPU target of another architecture whose code qemu-user can run here."""
    return (target.device == "cpu" and target.platform.name != host_arch()
            and sandbox.emulator(target.platform.name) is not None)


# qemu CPUs for variants needing more than their platform's emulated CPU (Graviton2's
# neoverse-n1): qemu 7.2 (Debian 12) has no Neoverse V1, and its "max" has BF16.
VARIANT_QEMU_CPU = {"arm64-bf16": "max"}


def run_emulated(target_dir: Path, target, input_sets: list[dict], progress: Progress,
                 timeout_s: float = 3600, variant: str | None = None) -> list[dict]:
    """The module's outputs for each input set, run under qemu; `variant`: that variant,
    forced (else the one the runtime picks on the emulated CPU)."""
    manifest = read_manifest(target_dir)
    arch = target.platform.name
    with tempfile.TemporaryDirectory(prefix="edgebundle-emulate-") as tmp:
        tmp = Path(tmp)
        stage = tmp / "stage"
        stage.mkdir()
        stage_bundle(stage, target_dir, manifest, target, EMULATION_PYTHON, progress)
        argv = sandbox.python_command(EMULATION_PYTHON, arch, progress)
        (tmp / "out").mkdir()
        index = [write_raw(tensors, tmp, f"in-{i}-") for i, tensors in enumerate(input_sets)]
        (tmp / "inputs.json").write_text(json.dumps(index))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), **sandbox.emulator_env(arch)}
        if variant is not None:
            from runtime.cpu import FORCE_ENV

            env[FORCE_ENV] = variant
            if variant in VARIANT_QEMU_CPU:
                env["QEMU_CPU"] = VARIANT_QEMU_CPU[variant]
        with progress.step(f"run {target.name} module under emulation (qemu, {env.get('QEMU_CPU', 'default cpu')})"):
            proc = subprocess.run(
                argv + ["-c", _SCRIPT, str(stage), str(tmp / "inputs.json"), str(tmp / "out")],
                env=env, cwd=str(tmp), capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            tail = "\n    ".join(proc.stderr.strip().splitlines()[-12:])
            raise ValidationError(f"the {target.name} module failed under emulation (exit {proc.returncode}):\n    {tail}",
                                  where=str(Path(target_dir) / manifest.library.file),
                                  hint="an illegal instruction means code the target CPU lacks (check --cpu)")
        results = []
        for outs in json.loads((tmp / "out" / "index.json").read_text()):
            arrays = {}
            for name, (path, fmt, shape) in outs.items():
                raw = (tmp / "out" / Path(path).name).read_bytes()
                arrays[name] = np.frombuffer(raw, dtype=np.dtype(fmt)).reshape(shape)
            results.append(arrays)
        return results
