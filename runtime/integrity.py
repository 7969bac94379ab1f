"""A model's files checked against model.json's sizes and sha256s before they are used.

When: every size at load (a stat each). The compiled code (model*.so) and every other
small file are hashed at load, before anything reads them: dlopen runs a library's code,
so a library must be verified before it is loaded, not after. The weights are hashed in a
background thread started at load, and `wait()` (Model.execute calls it, so before the
first answer; Model.warm at its end, so before a server is ready) blocks until it is done
and raises if it failed.

Why in the background: sha256 of BERT-base's 440 MB model.weights took 0.30-0.34 s on
this build machine (AMD EPYC Zen 5, SHA-NI, page cache warm; hashlib, 1 MiB reads) and
more on a cold disk or a small Lambda - a cold start's worth. hashlib and read() release
the GIL, so it overlaps the rest of the load (dlopen, tokenizer, device copies) and the
warm-up; reading the file also brings it into the page cache the weights are mapped from,
so the first request's page faults are then minor. Running the weights before they are
verified is safe: the table was checked against the file (runtime/_tvm.py, check_table),
so tampered values give wrong numbers, never a read outside the file - and no number
leaves the process before `wait()` has passed.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from .manifest import FILENAME, IntegrityError, Manifest

_CHUNK = 1 << 20
_WHAT_TO_DO = IntegrityError.REMEDY


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(path: Path, what: str) -> IntegrityError:
    return IntegrityError(f"{path} {what}: not the file this model was built with (it is truncated, damaged or "
                          f"belongs to another build, or was modified); {_WHAT_TO_DO}")


class Integrity:
    """Started at load; see the module's docstring for what is checked when."""

    def __init__(self, model_dir: Path, m: Manifest):
        self.dir = Path(model_dir)
        self._error: IntegrityError | None = None
        self._done = threading.Event()
        where = self.dir / FILENAME
        for name, record in sorted(m.files.items()):
            path = self.dir / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise IntegrityError(f"{path} is missing ({where} lists it); {_WHAT_TO_DO}") from None
            except OSError as e:
                raise IntegrityError(f"{path} cannot be read ({e.strerror}); {_WHAT_TO_DO}") from None
            if not path.is_file():
                raise IntegrityError(f"{path} is not a regular file ({where} lists it); {_WHAT_TO_DO}")
            if size != record["size"]:
                raise _mismatch(path, f"is {size} bytes, {where} records {record['size']}")
        later = m.weights.file if m.weights else None
        self._thread = None
        if later is not None:
            self._thread = threading.Thread(target=self._verify_later, args=(later, m.files[later]["sha256"]),
                                            name=f"edgebundle-verify-{later}", daemon=True)
            self._thread.start()
        else:
            self._done.set()
        for name, record in sorted(m.files.items()):
            if name != later:
                self.verify(name, record["sha256"])

    def verify(self, name: str, sha256: str) -> None:
        path = self.dir / name
        try:
            digest = sha256_of(path)
        except OSError as e:
            raise IntegrityError(f"{path} cannot be read ({e.strerror}); {_WHAT_TO_DO}") from None
        if digest != sha256:
            raise _mismatch(path, f"has sha256 {digest}, {self.dir / FILENAME} records {sha256}")

    def _verify_later(self, name: str, sha256: str) -> None:
        try:
            self.verify(name, sha256)
        except IntegrityError as e:
            self._error = e
        except BaseException as e:  # noqa: BLE001 - an unverified file must never count as verified
            self._error = IntegrityError(f"{self.dir / name} could not be verified ({e!r}); {_WHAT_TO_DO}")
        finally:
            self._done.set()

    def wait(self) -> None:
        """Returns once every file is verified; IntegrityError (every time) if one failed."""
        if not self._done.is_set():
            self._done.wait()
        if self._error is not None:
            raise IntegrityError(str(self._error))  # a fresh one: a reraised one would grow its traceback
