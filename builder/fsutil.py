"""Files written atomically and archives unpacked safely: one helper each.

Every output (libraries, weights, manifests, zips, cached wheels' libraries) is written to
a temporary name beside its destination and renamed over it only once complete, so a
killed build never leaves a file that looks finished. A build's target directory, whose
files must agree with each other (model.json records every other file's sha256), is
written whole into a staging directory and swapped in (staging_dir, replace_dir).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the kernel,
    libc or file system cannot."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _leftovers(dest: Path, kind: str) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.{kind}-*"))


def staging_dir(dest: Path) -> Path:
    """A new empty directory beside `dest` to write what replaces it (replace_dir). What a
    killed build left beside `dest` is cleared first: a half-written staging directory, or
    the previous `dest` that replace_dir had moved aside, put back if `dest` is missing."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in _leftovers(dest, "old"):
        if not dest.exists():
            os.rename(old, dest)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for stale in _leftovers(dest, "staging"):
        shutil.rmtree(stale, ignore_errors=True)
    # A name never used before in this process: glibc's dlopen answers a path it has loaded
    # with that library again, so validating a second build in one process at the first
    # one's staging path would run the first one's code. Not mkdtemp: its mode is 0700,
    # mkdir's is the umask's, as dest's was.
    stage = dest.with_name(f".{dest.name}.staging-{os.getpid()}-{secrets.token_hex(4)}")
    stage.mkdir()
    return stage


def replace_dir(stage: Path, dest: Path) -> None:
    """`stage` becomes `dest`, as one step where the kernel can: at every instant `dest` is
    the whole old directory or the whole new one, whenever the process is killed. Elsewhere,
    two renames; a kill between them leaves the old one beside `dest` for staging_dir to put
    back."""
    stage, dest = Path(stage), Path(dest)
    if not dest.exists():
        os.rename(stage, dest)
        return
    if _exchange(stage, dest):
        shutil.rmtree(stage)  # now the old directory
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.rename(dest, old)
    os.rename(stage, dest)
    shutil.rmtree(old)


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


def write_private(path: Path, text: str) -> None:
    """A new file only its owner can read (O_EXCL: never one somebody placed there), for
    secrets that must not go on a command line."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
