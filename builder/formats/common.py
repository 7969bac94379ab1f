"""Pieces every bundle format shares."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "runtime"


def file_record(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "size": path.stat().st_size}


def copy_runtime(dest_root: Path) -> None:
    """runtime/ as source only (no caches: bytecode would break determinism)."""
    dest = dest_root / "runtime"
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(RUNTIME_DIR.glob("*.py")):
        shutil.copy2(src, dest / src.name)


def stage_model(target_dir: Path, dest: Path, manifest: dict) -> None:
    """model.json and every file it lists (model.so, tokenizer.json, ...)."""
    for name in ["model.json", *manifest["files"]]:
        shutil.copy2(target_dir / name, dest / name)
