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
from typing import NamedTuple


class QueueFull(Exception):
    """The queue holds its maximum of rows; the server answers 503 + Retry-After."""


class TooLarge(Exception):
    """A request of more rows than the whole queue holds: it could never be queued, so it is
    refused for good (413), not with a 503 that invites retrying."""

    def __init__(self, rows: int, max_queue: int):
        super().__init__(f"the request has {rows} rows; the server queues at most {max_queue} (--max-queue)")


class Closed(Exception):
    """The batcher stopped taking requests (the server is shutting down)."""


class _Job:
    __slots__ = ("outputs", "remaining", "error", "done", "batches", "pending")

    def __init__(self, n: int):
        self.outputs = [None] * n
        self.remaining = n
        self.pending = collections.deque()  # its _Entry's not yet taken by the worker, in order
        self.error = None
        self.done = threading.Event()
        self.batches = []  # the row count of each batch this job's items ran in


class _Entry(NamedTuple):
    job: _Job
    index: int  # of the item in its request
    item: object
    key: object  # items of equal keys may share a model call
    rows: int


class Batcher:
    """`execute(items) -> outputs per item` runs one batch; `key(item)` says which items may
    share one (equal keys); `decoding()` counts requests still being decoded by the server.

    The queue holds at most `max_queue` rows (not requests: one request may carry many).
    Batches are taken fairly: one item from each waiting request in turn, oldest request
    first, so a request of many items shares every batch with the others instead of
    holding them back until all its items ran."""

    def __init__(self, execute, key, max_batch: int, window_s: float, max_queue: int,
                 decoding=lambda: 0, on_batch=None):
        self._execute, self._key = execute, key
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self._decoding = decoding
        self._on_batch = on_batch or (lambda rows, seconds: None)
        # Requests with items still queued, oldest first ({job: enqueued at}; dicts keep order).
        self._waiting: dict[_Job, float] = {}
        self._rows = 0  # rows queued
        self._running = 0  # requests whose items the worker holds
        self._cv = threading.Condition()
        self._closing = False
        self._last_requests = 0  # requests in the last model call: a load signal for the window
        self._worker = threading.Thread(target=self._loop, name="edgebundle-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Requests waiting in the queue."""
        return len(self._waiting)

    @property
    def rows(self) -> int:
        """Rows waiting in the queue."""
        return self._rows

    @property
    def busy(self) -> bool:
        with self._cv:
            return bool(self._waiting) or self._running > 0

    def submit(self, items: list, timeout_s: float, on_queued=None) -> tuple[list, list]:
        """Queue one request's items and wait for their outputs. Returns (outputs per item,
        the row count of each batch they ran in). Raises TooLarge, QueueFull, Closed, TimeoutError, or
        what the model raised. `on_queued()` runs under the queue's lock once the items are in."""
        if not items:  # nothing to run; an empty job would stall the worker's take
            return [], []
        job = _Job(len(items))
        entries = [_Entry(job, n, item, self._key(item), item.rows) for n, item in enumerate(items)]
        rows = sum(e.rows for e in entries)
        with self._cv:
            if self._closing:
                raise Closed()
            if rows > self.max_queue:
                raise TooLarge(rows, self.max_queue)
            if self._rows + rows > self.max_queue:
                raise QueueFull()
            self._rows += rows
            job.pending.extend(entries)
            self._waiting[job] = time.monotonic()
            if on_queued is not None:
                on_queued()
            self._cv.notify_all()
        if not job.done.wait(timeout_s):
            with self._cv:
                if not job.done.is_set():
                    # Its queued items are dropped; a running batch finishes.
                    if self._waiting.pop(job, None) is not None:
                        self._rows -= sum(e.rows for e in job.pending)
                        job.pending.clear()
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
    def _take(self) -> list[_Entry]:
        """The next batch: the oldest request's next item, then round after round one item
        from each waiting request (oldest first) whose next item has the same key, while
        they fit in max_batch rows. The first item is always taken: one of more rows than
        max_batch (a list of inputs under --max-batch 1) runs alone. Looks only at each
        request's next item: at most max_batch rounds over the waiting requests. Called
        with the lock held."""
        jobs = list(self._waiting)
        key = jobs[0].pending[0].key
        batch, rows = [], 0
        while True:
            took = False
            for job in jobs:
                if not job.pending:
                    continue
                entry = job.pending[0]
                if batch and (entry.key != key or rows + entry.rows > self.max_batch):
                    continue
                batch.append(job.pending.popleft())
                rows += entry.rows
                took = True
                if rows >= self.max_batch:
                    break
            if not took or rows >= self.max_batch:
                break
        self._rows -= rows
        for job in jobs:
            if not job.pending:
                del self._waiting[job]
        return batch

    def _ready_rows(self, key) -> int:
        return sum(e.rows for job in self._waiting for e in job.pending if e.key == key)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._closing:
                    self._cv.wait()
                if not self._waiting:
                    return
                oldest = next(iter(self._waiting))
                deadline = self._waiting[oldest] + self.window_s
                # Wait for more only under load: requests still being decoded, or the last
                # call held several requests (their clients are about to send again).
                while (not self._closing and (self._decoding() > 0 or self._last_requests > 1) and self._waiting
                       and self._ready_rows(next(iter(self._waiting)).pending[0].key) < self.max_batch):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if not self._waiting:  # what it waited with timed out meanwhile
                    continue
                batch = self._take()
                jobs = {id(e.job): e.job for e in batch}
                self._running += len(jobs)
            self._run(batch)
            with self._cv:
                self._running -= len(jobs)

    def notify(self) -> None:
        """A request finished decoding without being queued (an error): stop waiting for it."""
        with self._cv:
            self._cv.notify_all()

    def _run(self, batch: list[_Entry]) -> None:
        rows = sum(e.rows for e in batch)
        start = time.perf_counter()
        try:
            outputs = self._execute([e.item for e in batch])
            error = None
        except Exception as e:  # reaches every request of the batch; the server keeps running
            outputs, error = [None] * len(batch), e
        self._on_batch(rows, time.perf_counter() - start)
        self._last_requests = len({id(e.job) for e in batch})
        with self._cv:
            for entry, out in zip(batch, outputs):
                job = entry.job
                job.outputs[entry.index] = out
                job.batches.append(rows)
                if error is not None and job.error is None:
                    job.error = error
                job.remaining -= 1
                if job.remaining == 0 or (error is not None and not job.pending):
                    job.done.set()
