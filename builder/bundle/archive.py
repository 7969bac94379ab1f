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


def write_tar_gz(root: Path, tar_path: Path, top: str) -> None:
    """A deterministic .tar.gz of root's files under the directory `top`: sorted names,
    fixed times, owners and permissions (0755 for executables and directories, else 0644),
    and a gzip header without a name or time."""
    import gzip
    import tarfile

    root, tar_path = Path(root), Path(tar_path)

    def info(name: str, path: Path | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 315532800, 0, 0, "root", "root"
        if path is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        else:
            ti.size, ti.mode = path.stat().st_size, 0o755 if os.access(path, os.X_OK) else 0o644
        return ti

    files = tree_files(root)
    dirs = sorted({p.relative_to(root).as_posix() for f in files for p in f.parents
                   if p != root and root in p.parents} | {""})
    with atomic_path(tar_path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = [(f"{top}/{d}".rstrip("/"), None) for d in dirs]
        entries += [(f"{top}/{f.relative_to(root).as_posix()}", f) for f in files]
        for name, path in sorted(entries):
            if path is None:
                tar.addfile(info(name, None))
            else:
                with open(path, "rb") as src:
                    tar.addfile(info(name, path), src)
