"""Dynamic batching for the model server: requests wait in one bounded queue and a single
worker runs them together, up to the model's max batch.

The model runs one call at a time (the VM is not re-entrant), so while it runs, requests
pile up and the next call takes them all. The window (at most `window_s` after the oldest
queued request) is waited only under load: while the server is still decoding other
requests, or when the last call held several requests (their clients are about to send again;
on 2 cores, decoding competes with the model, so requests arrive just after a call starts).
A lone client (one request per call, nothing being decoded) never waits, whatever its rows. Measured with
examples/bench/serve_load.py (all-MiniLM-L6-v2, 16 clients, short sentences): without the
load rule batches averaged 5 rows and batching gave 1.25-1.3x the requests/s of serving
one at a time; with it 1.6-1.7x.
"""
from __future__ import annotations

import collections
import threading
import time


class QueueFull(Exception):
    """The queue holds its maximum of requests; the server answers 503 + Retry-After."""


class Closed(Exception):
    """The batcher stopped taking requests (the server is shutting down)."""


class _Job:
    __slots__ = ("outputs", "remaining", "error", "done", "cancelled", "batches", "queued")

    def __init__(self, n: int):
        self.outputs = [None] * n
        self.remaining = n
        self.queued = n  # items not yet taken by the worker
        self.error = None
        self.done = threading.Event()
        self.cancelled = False
        self.batches = []  # the row count of each batch this job's items ran in


class Batcher:
    """`execute(items) -> outputs per item` runs one batch; `key(item)` says which items may
    share one (equal keys); `decoding()` counts requests still being decoded by the server."""

    def __init__(self, execute, key, max_batch: int, window_s: float, max_queue: int,
                 decoding=lambda: 0, on_batch=None):
        self._execute, self._key = execute, key
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self._decoding = decoding
        self._on_batch = on_batch or (lambda rows, seconds: None)
        self._pending = collections.deque()  # (job, index, item, key, rows, enqueued at)
        self._jobs = 0  # requests with items still queued
        self._running = 0  # requests whose items the worker holds
        self._cv = threading.Condition()
        self._closing = False
        self._last_requests = 0  # requests in the last model call: a load signal for the window
        self._worker = threading.Thread(target=self._loop, name="edgebundle-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Requests waiting in the queue."""
        return self._jobs

    @property
    def busy(self) -> bool:
        with self._cv:
            return bool(self._pending) or self._running > 0

    def submit(self, items: list, timeout_s: float, on_queued=None) -> tuple[list, list]:
        """Queue one request's items and wait for their outputs. Returns (outputs per item,
        the row count of each batch they ran in). Raises QueueFull, Closed, TimeoutError, or
        what the model raised. `on_queued()` runs under the queue's lock once the items are in."""
        job = _Job(len(items))
        now = time.monotonic()
        with self._cv:
            if self._closing:
                raise Closed()
            if self._jobs >= self.max_queue:
                raise QueueFull()
            self._jobs += 1
            for n, item in enumerate(items):
                self._pending.append((job, n, item, self._key(item), item.rows, now))
            if on_queued is not None:
                on_queued()
            self._cv.notify_all()
        if not job.done.wait(timeout_s):
            with self._cv:
                if not job.done.is_set():
                    job.cancelled = True  # its queued items are dropped; a running batch finishes
                    if job.queued:
                        self._jobs -= 1
                        job.queued = 0
                        self._pending = collections.deque(p for p in self._pending if p[0] is not job)
                    raise TimeoutError()
        if job.error is not None:
            raise job.error
        return job.outputs, job.batches

    def close(self) -> None:
        """Take no new requests; the worker finishes what is queued, then stops."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()

    def join(self, timeout: float | None = None) -> None:
        self._worker.join(timeout)

    # -- worker ------------------------------------------------------------------------
    def _take(self) -> list:
        """The next batch, oldest request first: items of the oldest item's key, in queue
        order, while they fit in max_batch rows. The oldest item is always taken: one of more
        rows than max_batch (a list of inputs under --max-batch 1) runs alone. Called with the
        lock held."""
        first = self._pending[0]
        batch, rows, keep = [], 0, collections.deque()
        for entry in self._pending:
            if entry is first or (entry[3] == first[3] and rows + entry[4] <= self.max_batch):
                batch.append(entry)
                rows += entry[4]
            else:
                keep.append(entry)
        self._pending = keep
        for job, *_ in batch:
            job.queued -= 1
            if job.queued == 0:
                self._jobs -= 1
        return batch

    def _ready_rows(self, key) -> int:
        return sum(e[4] for e in self._pending if e[3] == key)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending:
                    return
                deadline = self._pending[0][5] + self.window_s
                # Wait for more only under load: requests still being decoded, or the last
                # call held several requests (their clients are about to send again).
                while (not self._closing and (self._decoding() > 0 or self._last_requests > 1) and self._pending
                       and self._ready_rows(self._pending[0][3]) < self.max_batch):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if not self._pending:  # what it waited with timed out meanwhile
                    continue
                batch = self._take()
                jobs = {id(e[0]): e[0] for e in batch}
                self._running += len(jobs)
            self._run(batch)
            with self._cv:
                self._running -= len(jobs)

    def notify(self) -> None:
        """A request finished decoding without being queued (an error): stop waiting for it."""
        with self._cv:
            self._cv.notify_all()

    def _run(self, batch: list) -> None:
        rows = sum(e[4] for e in batch)
        start = time.perf_counter()
        try:
            outputs = self._execute([e[2] for e in batch])
            error = None
        except Exception as e:  # reaches every request of the batch; the server keeps running
            outputs, error = [None] * len(batch), e
        self._on_batch(rows, time.perf_counter() - start)
        self._last_requests = len({id(e[0]) for e in batch})
        with self._cv:
            for (job, n, *_), out in zip(batch, outputs):
                job.outputs[n] = out
                job.batches.append(rows)
                if error is not None and job.error is None:
                    job.error = error
                job.remaining -= 1
                if job.remaining == 0 or (error is not None and job.queued == 0):
                    job.done.set()
