"""Deterministic zips: same files in, byte-identical zip out (sorted names, fixed
timestamps and permissions, no directory entries, fixed compression level)."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from builder.fsutil import atomic_path

_EPOCH = (1980, 1, 1, 0, 0, 0)


def tree_files(root: Path) -> list[Path]:
    return sorted((p for p in Path(root).rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in tree_files(root))


def write_zip(root: Path, zip_path: Path) -> None:
    root, zip_path = Path(root), Path(zip_path)
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for path in tree_files(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_EPOCH)
            info.create_system = 3  # unix, so external_attr carries permissions
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
