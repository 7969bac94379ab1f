"""Files written atomically and archives unpacked safely: one helper each.

Every output (libraries, weights, manifests, zips, cached wheels' libraries) is written to
a temporary name beside its destination and renamed over it only once complete, so a
killed build never leaves a file that looks finished.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields `path.partial` to write; it replaces `path` when the block succeeds and is
    removed when it fails."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def atomic_write(path: Path, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)


def write_json(path: Path, data) -> None:
    """Sorted keys, indented, newline-terminated: diffable and deterministic."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def unzip(zip_path: Path, dest: Path, *, error: Callable[[str], Exception], rename: Callable | None = None) -> list[str]:
    """Extract `zip_path` into `dest`; returns the relative paths written.

    Entries that would land outside `dest` raise `error`. `rename(PurePosixPath)` may map an
    entry to another relative path, or to None to skip it. Permission bits in the archive are
    kept (owner-readable at least): executables and libraries stay executable."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise error(f"cannot read {Path(zip_path).name}: {e}") from None
    with zf:
        for info in zf.infolist():
            rel = PurePosixPath(info.filename)
            if rel.is_absolute() or ".." in rel.parts:
                raise error(f"archive entry escapes the target directory: {info.filename} (in {zip_path})")
            if info.is_dir():
                continue
            if rename is not None:
                rel = rename(rel)
                if rel is None:
                    continue
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode | 0o400)
            written.append(str(rel))
    return written
