"""Schedule parameters from a database `edgebundle tune` wrote, for `build --tuning-db`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from builder.errors import EdgebundleError


def load_tuning_db(path: Path, tvm_target: dict) -> tuple:
    """(CpuParams, {"file", "sha256"}) from a database `tune` wrote for the same TVM target.
    The record is what manifests keep of it: its name and the sha256 of the bytes read,
    never its path (manifests ship in every bundle)."""
    from builder.compiler.schedules.cpu import CpuParams

    try:
        raw = Path(path).read_bytes()
        db = json.loads(raw)
    except (OSError, ValueError) as e:
        raise EdgebundleError(f"cannot read the tuning database: {e}", where=str(path)) from None
    if db.get("target") != tvm_target:
        raise EdgebundleError(
            f"the tuning database was made for {json.dumps(db.get('target'))}, not {json.dumps(tvm_target)}",
            where=str(path), hint="tune again for this target / --cpu, or build without --tuning-db")
    known = {f.name for f in dataclasses.fields(CpuParams)}
    return (CpuParams(**{k: v for k, v in db["params"].items() if k in known}),
            {"file": Path(path).name, "sha256": hashlib.sha256(raw).hexdigest()})
