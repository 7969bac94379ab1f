"""Schedule parameters from a database `edgebundle tune` wrote, for `build --tuning-db`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from builder.errors import EdgebundleError


def _read(path: Path) -> tuple[bytes, dict]:
    try:
        raw = Path(path).read_bytes()
        db = json.loads(raw)
    except (OSError, ValueError) as e:
        raise EdgebundleError(f"cannot read the tuning database: {e}", where=str(path)) from None
    if not isinstance(db, dict) or not isinstance(db.get("params"), dict):
        raise EdgebundleError("not a tuning database (no \"params\")", where=str(path),
                              hint="pass a file `edgebundle tune` wrote")
    return raw, db


def read_target(path: Path) -> dict | None:
    """The TVM target a database was tuned for: the variant of that target uses it."""
    return _read(path)[1].get("target")


def mismatch(path: Path, tuned: dict | None, compiled: list) -> EdgebundleError:
    return EdgebundleError(
        f"the tuning database was made for {json.dumps(tuned)}, which none of the variants compiled uses "
        f"({'; '.join(json.dumps(t) for t in compiled)})",
        where=str(path), hint="tune again for one of them (edgebundle tune --variant / --cpu), or build without "
                              "--tuning-db")


# How weights are packed, not how they are read: every variant of a target reads the one
# model.weights, so the variant a database was tuned for keeps its defaults' panels.
LAYOUT = ("dense_panel", "conv_panel")


def load_tuning_db(path: Path, tvm_target: dict, base) -> tuple:
    """(CpuParams, {"file", "sha256"}) from a database `tune` wrote for the same TVM target:
    `base` (the variant's defaults) with the tuned tile knobs. The record is what manifests
    keep of it: its name and the sha256 of the bytes read, never its path (manifests ship
    in every bundle)."""
    raw, db = _read(path)
    if db.get("target") != tvm_target:
        raise mismatch(path, db.get("target"), [tvm_target])
    known = {f.name for f in dataclasses.fields(base)}
    tuned = {k: v for k, v in db["params"].items() if k in known and k not in LAYOUT}
    return (dataclasses.replace(base, **tuned),
            {"file": Path(path).name, "sha256": hashlib.sha256(raw).hexdigest()})
