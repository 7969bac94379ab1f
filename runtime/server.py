"""The model server's application: SageMaker's inference contract, the Open Inference
Protocol (KServe v2 REST) and Prometheus metrics over one loaded model, as a WSGI app.

Standard library only: the HTTP layer (waitress, vendored into images and edge installs)
is attached in runtime/serve.py. This module routes and answers; the Open Inference
Protocol itself (requests read against the manifest, answers, metadata) is runtime/v2.py.
Requests are decoded on the server's threads, run through one Batcher, and answered with
JSON; every failure is a status with {"error": ...}, mapped in one table (_FAILURES).
"""
from __future__ import annotations

import dataclasses
import hmac
import json
import os
import re
import sys
import threading
import time
import traceback
import uuid

from . import v2
from .batching import Batcher, Closed, QueueFull, TooLarge
from .errors import BadInput
from .events import decode, dumps, loads
from .limits import MAX_INPUTS
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .v2 import MODEL_VERSION

_JSON = v2.JSON
_STATUS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
           504: "Gateway Timeout"}
# What probes (systemd, Kubernetes, load balancers, SageMaker) call without credentials;
# with a token every other path, the model's own ready path included, is authorized first.
_OPEN_PATHS = ("/ping", "/v2/health/live", "/v2/health/ready")
_V2_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?$")
_RETRY = (("Retry-After", "1"),)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: tuple = ()):
        super().__init__(message)
        self.status, self.headers = status, list(headers)


@dataclasses.dataclass(frozen=True)
class Options:
    """Serving knobs; their defaults are the command line's (runtime/serve.py reads them)."""

    max_batch: int | None = None  # None: the model's
    # Measured with examples/bench/serve_load.py (all-MiniLM-L6-v2, 16 clients, short
    # sentences, 2 cores): windows of 2, 5 and 10 ms gave 1.67x, 1.63x and 1.31x the
    # requests/s of unbatched serving in one run; a lone client never waits (batching.py).
    batch_window_ms: float = 2.0
    # Rows (one per text or image; a tensor request's batch) waiting for the model: two full
    # batches of a typical max batch of 32, and at least one request of MAX_INPUTS (a request
    # of more rows than the queue holds is a 413, never a 503 to retry). Each waiting request
    # holds a server thread, and the threads' native memory is most of the server's RSS
    # growth under load (tests/test_server.py's load test): rows bound requests too.
    max_queue: int = 64
    timeout_s: float = 30.0
    warm: bool = True
    # A bearer token every request must carry, except the health probes (systemd,
    # Kubernetes and load balancers probe without credentials).
    token: str | None = None
    max_inputs: int = MAX_INPUTS


@dataclasses.dataclass(frozen=True)
class Response:
    body: bytes
    status: int = 200
    content_type: str = _JSON
    headers: tuple = ()
    batches: list | None = None  # the sizes of the batches the request ran in


def _answer(value, batches=None) -> Response:
    return Response(_json(value), batches=batches)


# How a failure while a request is read or run answers: the first entry whose type matches.
_FAILURES = (
    (BadInput, lambda app, e: HTTPError(400, str(e))),
    (TooLarge, lambda app, e: HTTPError(413, str(e))),
    (QueueFull, lambda app, e: HTTPError(503, f"the queue is full ({app.options.max_queue} rows waiting); retry "
                                              "shortly", _RETRY)),
    (Closed, lambda app, e: HTTPError(503, "the server is shutting down", _RETRY)),
    (TimeoutError, lambda app, e: HTTPError(504, f"no answer within {app.options.timeout_s:g} s (the model is "
                                                 "overloaded); retry later or with fewer inputs")),
)


class App:
    """A WSGI application serving the model in `model_dir` under `name`. Live from the
    start; ready once load() has loaded and warmed the model."""

    def __init__(self, model_dir, name: str | None = None, options: Options | None = None, log=None):
        from . import manifest

        self.model_dir = model_dir
        self.manifest = manifest.read(model_dir)
        self.name = name or default_name(self.manifest.model.name)
        self.options = options or Options()
        self.max_batch = min(self.options.max_batch or self.manifest.max_batch, self.manifest.max_batch)
        self.metrics = Metrics(self.name, self.max_batch)
        self.model = None
        self.batcher = None
        self.load_error = None
        self.draining = False
        self._decoding = 0
        self._lock = threading.Lock()
        self._log = log or sys.stdout
        # {path: (endpoint label, {method: handler})}; the model's v2 paths are literal: one name.
        model = f"/v2/models/{self.name}"
        versioned = f"{model}/versions/{MODEL_VERSION}"
        self._routes = {"/ping": ("ping", {"GET": self._ping}),
                        "/invocations": ("invocations", {"POST": self._invocations}),
                        "/metrics": ("metrics", {"GET": self._metrics}),
                        "/v2/health/live": ("health", {"GET": self._live}),
                        "/v2/health/ready": ("health", {"GET": self._ready}),
                        "/v2": ("v2_server", {"GET": self._server_metadata}),
                        "/": ("info", {"GET": self._info}),
                        model: ("v2_metadata", {"GET": self._model_metadata}),
                        f"{model}/ready": ("health", {"GET": self._ready}),
                        f"{model}/infer": ("v2_infer", {"POST": self._infer}),
                        versioned: ("v2_metadata", {"GET": self._model_metadata}),
                        f"{versioned}/ready": ("health", {"GET": self._ready}),
                        f"{versioned}/infer": ("v2_infer", {"POST": self._infer})}
        self._log_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> None:
        """Load and warm the model, then start batching; on failure keep the error (the
        server exits with it)."""
        from .model import Model

        start = time.perf_counter()
        try:
            model = Model(self.model_dir)
            model.max_inputs = self.options.max_inputs
            if self.options.warm:
                model.warm()
        except BaseException as e:  # noqa: BLE001 - reported by the serving loop, which exits
            self.load_error = e
            return
        self.batcher = Batcher(model.execute, model.batch_key, self.max_batch, self.options.batch_window_ms / 1000,
                               self.options.max_queue, decoding=lambda: self._decoding,
                               on_batch=self.metrics.observe_batch)
        self.metrics.queue_depth = lambda: self.batcher.depth
        self.model = model  # last: a model makes the server ready, and requests then need the batcher
        self.metrics.load_seconds = time.perf_counter() - start
        self.metrics.ready = True
        self.event("ready", load_ms=round(self.metrics.load_seconds * 1000, 1), max_batch=self.max_batch,
                   batch_window_ms=self.options.batch_window_ms, max_queue=self.options.max_queue,
                   threads=os.environ.get("TVM_NUM_THREADS"), variant=model.variant.name,
                   variant_reason=model.variant_reason)

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    def busy(self) -> bool:
        return self.metrics.in_flight > 0 or (self.batcher is not None and self.batcher.busy)

    def event(self, what: str, **fields) -> None:
        """One JSON line on the log (stdout)."""
        line = json.dumps({"time": round(time.time(), 3), "event": what, **fields}, separators=(",", ":"))
        with self._log_lock:
            self._log.write(line + "\n")
            self._log.flush()

    # -- WSGI --------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        start = time.perf_counter()
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        request_id = _request_id(environ)
        endpoint = "unknown"
        with self._lock:
            self.metrics.in_flight += 1
        try:
            # Authorized before routing: a 404 or 405 would otherwise tell anyone the
            # model's name and routes. Only the health probes are open.
            if self.options.token and (path.rstrip("/") or "/") not in _OPEN_PATHS:
                self._authorize(environ)
            endpoint, handler = self._route(method, path)
            response = handler(environ)
        except Exception as e:  # noqa: BLE001 - every failure becomes a status
            # Outside _run (which maps the whole table), only a malformed body is the client's.
            failure = e if isinstance(e, HTTPError) else self._failure(e) if isinstance(e, BadInput) else None
            if failure is None:  # a bug: the client gets a 500 without internals, the log the traceback
                traceback.print_exc(file=sys.stderr)
                failure = HTTPError(500, "internal error; see the server's log")
            response = Response(_json({"error": str(failure)}), failure.status, headers=tuple(failure.headers))
        finally:
            with self._lock:
                self.metrics.in_flight -= 1
        # No "Connection: close" while draining: a hop-by-hop header, which WSGI servers refuse
        # (waitress turned every answer into a 500): serve.py closes them after each answer.
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   ("X-Request-Id", request_id), *response.headers]
        start_response(f"{response.status} {_STATUS.get(response.status, 'Error')}", headers)
        seconds = time.perf_counter() - start
        self.metrics.observe_request(endpoint, response.status, seconds)
        if endpoint not in ("metrics", "ping", "health"):
            self.log_request(request_id, method, path, response.status, seconds, response.batches)
        return [response.body]

    def _failure(self, e: Exception) -> HTTPError | None:
        for kind, answer in _FAILURES:
            if isinstance(e, kind):
                return answer(self, e)
        return None

    def _authorize(self, environ) -> None:
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  self.options.token.encode()):
            raise HTTPError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                            [("WWW-Authenticate", 'Bearer realm="edgebundle"')])

    def log_request(self, request_id, method, path, status, seconds, batches=None) -> None:
        fields = {"id": request_id, "method": method, "path": path, "status": status,
                  "latency_ms": round(seconds * 1000, 3)}
        if batches:
            fields["batch"] = max(batches)
        self.event("request", **fields)

    def _route(self, method: str, path: str):
        found = self._routes.get(path.rstrip("/") or "/")
        if found is None:
            m = _V2_MODEL.match(path.rstrip("/"))
            if m is not None and m.group(1) != self.name:
                raise HTTPError(404, f"unknown model {m.group(1)!r}; this server serves {self.name!r}")
            if m is not None and m.group(2) is not None:
                raise HTTPError(404, f"model {self.name!r} has no version {m.group(2)!r}; its versions are "
                                     f"[{MODEL_VERSION!r}]")
            raise HTTPError(404, f"no such path {path}; the server answers /ping, /invocations, /metrics, "
                                 f"/v2/health/live, /v2/health/ready, /v2/models/{self.name}[/versions/{MODEL_VERSION}][/ready|/infer]")
        endpoint, methods = found
        if method not in methods:
            raise HTTPError(405, f"{method} is not allowed on {path}; use {', '.join(methods)}",
                            headers=[("Allow", ", ".join(methods))])
        return endpoint, methods[method]

    # -- health and metadata -----------------------------------------------------------
    def _not_ready(self) -> HTTPError:
        if self.draining:
            return HTTPError(503, "the server is shutting down", _RETRY)
        # The open probes answer this without a token: the name only where no token guards it.
        what = "the model" if self.options.token else f"the model {self.name}"
        return HTTPError(503, f"{what} is loading", _RETRY)

    def _ping(self, environ) -> Response:
        if not self.ready:
            raise self._not_ready()
        return _answer({"status": "ready"} if self.options.token else {"status": "ready", "model": self.name})

    def _live(self, environ) -> Response:
        return _answer({"live": True})

    def _ready(self, environ) -> Response:
        if not self.ready:
            raise self._not_ready()
        return _answer({"ready": True})

    def _metrics(self, environ) -> Response:
        return Response(self.metrics.render().encode(), content_type=METRICS_CONTENT_TYPE)

    def _server_metadata(self, environ) -> Response:
        return _answer(v2.server_metadata(self.manifest))

    def _info(self, environ) -> Response:
        m = self.manifest
        return _answer({"model": self.name, "task": m.model.task, "target": m.target.name, "ready": self.ready,
                        "max_batch": self.max_batch,
                        "endpoints": ["/ping", "/invocations", "/metrics", "/v2/health/live", "/v2/health/ready",
                                      f"/v2/models/{self.name}", f"/v2/models/{self.name}/infer"]})

    def _model_metadata(self, environ) -> Response:
        return _answer(v2.model_metadata(self.manifest, self.name))

    # -- inference ---------------------------------------------------------------------
    def _run(self, decode_items):
        """decode_items() -> (items, finish) on this thread, then the items through the
        batcher; the answer, and the sizes of the batches it ran in. While draining, what
        was received is still answered: only the health paths turn 503."""
        if self.model is None:
            raise self._not_ready()
        with self._lock:
            self._decoding += 1
        queued = False

        def on_queued():
            nonlocal queued
            queued = True
            # Under the batcher's lock too: its worker sees the request queued and no longer
            # decoding at once. (Lock order: batcher, then app; never the reverse.)
            with self._lock:
                self._decoding -= 1

        try:
            items, finish = decode_items()
            outputs, batches = self.batcher.submit(items, self.options.timeout_s, on_queued=on_queued)
            return finish(outputs), batches
        except Exception as e:  # noqa: BLE001 - the table says what the client gets; the rest is a 500
            failure = self._failure(e)
            if failure is None:
                raise
            raise failure from None
        finally:
            if not queued:
                with self._lock:
                    self._decoding -= 1
                self.batcher.notify()

    def _invocations(self, environ) -> Response:
        request = loads(_read_body(environ))
        answer, batches = self._run(lambda: decode(self.model, request))
        return _answer(answer, batches)

    def _infer(self, environ) -> Response:
        request, binary = v2.split_body(_read_body(environ), environ.get(v2.BINARY_HEADER))
        (answer, blobs), batches = self._run(lambda: v2.decode(self.model, self.manifest, self.name, request, binary))
        body, content_type, headers = v2.encode(answer, blobs)
        return Response(body, content_type=content_type, headers=tuple(headers), batches=batches)


def default_name(model_name: str) -> str:
    """The name a model is served under: the manifest's, without a hub id's owner."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", model_name.rstrip("/").rsplit("/", 1)[-1]) or "model"


def _request_id(environ) -> str:
    given = environ.get("HTTP_X_REQUEST_ID") or environ.get("HTTP_X_AMZN_REQUESTID")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


def _read_body(environ) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError(400, "invalid Content-Length") from None
    if length <= 0:
        raise HTTPError(400, "the request body is empty; send a JSON object")
    return environ["wsgi.input"].read(length)


def _json(value) -> bytes:
    return dumps(value).encode()
