"""Progress on long steps, on stderr, so stdout stays machine-readable."""
from __future__ import annotations

import contextlib
import sys
import time


class Progress:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.stream, flush=True)

    def warn(self, msg: str) -> None:
        # Warnings are never silenced by --quiet: they are about deployability.
        print(f"WARNING: {msg}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, label: str):
        """``with progress.step("compile x86_64"):`` prints start, then duration."""
        start = time.perf_counter()
        self.info(f"==> {label} ...")
        try:
            yield
        except BaseException:
            self.info(f"    {label}: failed after {time.perf_counter() - start:.1f}s")
            raise
        self.info(f"    {label}: done in {time.perf_counter() - start:.1f}s")


QUIET = Progress(quiet=True)
