"""Schedule parameters from a database `edgebundle tune` wrote, for `build --tuning-db`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from builder.errors import EdgebundleError


def load_tuning_db(path: Path, tvm_target: dict):
    """CpuParams from a database `tune` wrote for the same TVM target."""
    from builder.compiler.schedules.cpu import CpuParams

    try:
        db = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EdgebundleError(f"cannot read the tuning database: {e}", where=str(path)) from None
    if db.get("target") != tvm_target:
        raise EdgebundleError(
            f"the tuning database was made for {json.dumps(db.get('target'))}, not {json.dumps(tvm_target)}",
            where=str(path), hint="tune again for this target / --cpu, or build without --tuning-db")
    known = {f.name for f in dataclasses.fields(CpuParams)}
    return CpuParams(**{k: v for k, v in db["params"].items() if k in known})
