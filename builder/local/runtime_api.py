"""The Lambda Runtime API, served here, and the conversation with a function's process through
it: what builder/local/lambda_runtime.py's zip and image launchers share (and `invoke
--function`'s event checks and answer lines, builder/deploy/remote.py)."""
from __future__ import annotations

import collections
import http.server
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import NamedTuple, TextIO

from builder.errors import InvokeError

RUNTIME_API_PREFIX = "/2018-06-01/runtime"
# Lambda's synchronous payload limits (request 6 MB, response 6 MB + framing).
MAX_REQUEST_BYTES = 6 * 1024 * 1024
MAX_RESPONSE_BYTES = 6291556
ACCOUNT = "000000000000"
DEFAULT_REGION = "us-east-1"


def check_events(events: list[bytes]) -> None:
    for i, ev in enumerate(events, 1):
        try:
            json.loads(ev)
        except ValueError as e:
            raise InvokeError(
                f"event {i} is not valid JSON ({e}); Lambda accepts only JSON payloads",
                where=f"event {i}: {ev[:80]!r}",
                hint='pass a JSON document, e.g. {"inputs": "a sentence"}',
            ) from None


def lambda_env(api: "RuntimeAPI", name: str, region: str, memory_mb: int) -> dict:
    """What Lambda sets for every function, whatever its packaging."""
    return {
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + secrets.token_hex(16),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "TZ": ":UTC",
    }


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The function's process is killed on purpose (after the last event, on timeout or
        # Ctrl-C) while its connection may still be open; that is no server error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Note(NamedTuple):
    """What the runtime (or its process) reports to the driver, in order of arrival."""

    kind: str  # "next" | "response" | "error" | "init_error" | "exit"
    at: float = 0.0  # perf_counter() when it arrived
    request_id: str | None = None  # response, error
    body: bytes = b""  # response, error, init_error
    error_type: str | None = None  # init_error: Lambda-Runtime-Function-Error-Type
    exit_code: int | None = None  # exit


class RuntimeAPI:
    """The Lambda Runtime API, enough of it for one function instance.

    The server threads talk to the driver (``invoke_zip``) through two queues: invocations
    go out through ``pending`` (a blocked ``/next`` takes one), and everything the runtime
    reports comes back through ``notes`` as Notes, together with the process's exit
    (posted by a watcher thread), so the driver waits on exactly one thing.
    """

    def __init__(self, function_arn: str, timeout_s: float):
        self.function_arn = function_arn
        self.timeout_s = timeout_s
        self.pending: queue.Queue = queue.Queue()
        self.notes: queue.Queue = queue.Queue()
        self.open_ids: set[str] = set()
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.api = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, name="lambda-runtime-api", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        # Unblock a /next still waiting so its thread ends with the server.
        self.pending.put(None)
        self.server.shutdown()
        self.server.server_close()

    def enqueue(self, body: bytes) -> str:
        request_id = str(uuid.uuid4())
        with self.lock:
            self.open_ids.add(request_id)
        self.pending.put((request_id, body, int((time.time() + self.timeout_s) * 1000)))
        return request_id

    def close_id(self, request_id: str) -> bool:
        with self.lock:
            if request_id in self.open_ids:
                self.open_ids.discard(request_id)
                return True
            return False


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 so the runtime client can keep its connection and use Expect: 100-continue.
    protocol_version = "HTTP/1.1"
    # Without it every small response waits for the client's delayed ACK (~40-90 ms).
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass

    @property
    def api(self) -> RuntimeAPI:
        return self.server.api  # type: ignore[attr-defined]

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_json(self, code: int, obj: dict) -> None:
        self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        if self.path != f"{RUNTIME_API_PREFIX}/invocation/next":
            return self._send_json(404, {"errorType": "NotFound", "errorMessage": self.path})
        self.api.notes.put(Note("next", time.perf_counter()))
        item = self.api.pending.get()
        if item is None:
            self.api.pending.put(None)  # for any other waiter
            self.close_connection = True
            return self._send_json(503, {"errorType": "ShuttingDown", "errorMessage": "runtime is shutting down"})
        request_id, body, deadline_ms = item
        now = int(time.time())
        self._send(
            200,
            body,
            {
                "Content-Type": "application/json",
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": self.api.function_arn,
                "Lambda-Runtime-Trace-Id": f"Root=1-{now:08x}-{secrets.token_hex(12)};"
                f"Parent={secrets.token_hex(8)};Sampled=0",
            },
        )

    def do_POST(self):
        body = self._read_body()
        parts = self.path[len(RUNTIME_API_PREFIX):].strip("/").split("/")
        if self.path.startswith(RUNTIME_API_PREFIX + "/") and parts == ["init", "error"]:
            # Acknowledge before telling the driver, which may then stop the process.
            self._send_json(202, {"status": "OK"})
            self.api.notes.put(Note("init_error", time.perf_counter(), body=body,
                                    error_type=self.headers.get("Lambda-Runtime-Function-Error-Type")))
            return
        if (
            self.path.startswith(RUNTIME_API_PREFIX + "/")
            and len(parts) == 3
            and parts[0] == "invocation"
            and parts[2] in ("response", "error")
        ):
            request_id = parts[1]
            if not self.api.close_id(request_id):
                return self._send_json(
                    400, {"errorType": "InvalidRequestID", "errorMessage": f"no open invocation {request_id}"}
                )
            arrived = time.perf_counter()
            self._send_json(202, {"status": "OK"})
            self.api.notes.put(Note(parts[2], arrived, request_id, body))
            return
        self._send_json(404, {"errorType": "NotFound", "errorMessage": self.path})


# ---------------------------------------------------------------- driver


def one_line_json(body: bytes) -> str:
    """The body as one line of JSON: itself when it is JSON, else a JSON string of it."""
    text = body.decode("utf-8", errors="replace")
    try:
        json.loads(text)
    except ValueError:
        return json.dumps(text, ensure_ascii=False)
    # Raw CR/LF cannot occur inside JSON strings, so outside them they are whitespace.
    return text.replace("\r", " ").replace("\n", " ").strip()


class _LogPump(threading.Thread):
    """Copies the function's stdout+stderr (its logs) to ours, keeping a tail for errors."""

    def __init__(self, stream, sink: TextIO, keep: int = 40):
        super().__init__(name="lambda-logs", daemon=True)
        self.stream = stream
        self.sink = sink
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            # awslambdaric separates a traceback's lines with CR so CloudWatch keeps them
            # in one record; on a terminal they must be lines again.
            text = raw.decode("utf-8", errors="replace").rstrip("\n").replace("\r", "\n")
            self.tail.extend(text.splitlines() or [""])
            try:
                self.sink.write(text + "\n")
                self.sink.flush()
            except (OSError, ValueError):
                pass

    def text(self) -> str:
        return "\n    ".join(self.tail) if self.tail else "(no output)"


def converse(start, api: RuntimeAPI, events: list[bytes], out: TextIO, err: TextIO, timeout_s: float,
              where: str) -> int:
    """Start the function's process (start() -> Popen, its output on stdout) against `api`,
    wait for its init, send `events` one by one and print each answer; the exit status of
    invoke_zip. The caller stops the process."""
    t0 = time.perf_counter()
    proc = start()
    pump = _LogPump(proc.stdout, err)
    pump.start()
    threading.Thread(
        target=lambda p=proc: api.notes.put(Note("exit", exit_code=p.wait())), name="lambda-exit", daemon=True
    ).start()

    def crashed(when: str, rc: int) -> InvokeError:
        pump.join(timeout=2)
        return InvokeError(
            f"the function's process exited with code {rc} {when}; its last output:\n    {pump.text()}",
            where=where,
            hint="see the log above; on Lambda this shows as Runtime.ExitError",
        )

    def timed_out(when: str) -> InvokeError:
        stop(proc)
        pump.join(timeout=2)
        return InvokeError(
            f"no answer {when} within {timeout_s:g} s; the function's last output:\n    {pump.text()}",
            where=where,
            hint="the handler hangs or is too slow; Lambda would stop it at its timeout too",
        )

    def next_note(deadline: float, when: str) -> Note:
        try:
            return api.notes.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            raise timed_out(when) from None

    # Init: from process start until the runtime first asks for work (or reports).
    deadline = t0 + timeout_s
    while True:
        note = next_note(deadline, "during init")
        if note.kind == "next":
            print(f"init: {(note.at - t0) * 1000:.0f} ms", file=err, flush=True)
            break
        if note.kind == "init_error":
            print(one_line_json(note.body), file=out, flush=True)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            pump.join(timeout=2)
            return 2
        if note.kind == "exit":
            raise crashed("during init", note.exit_code)

    status = 0
    for i, event in enumerate(events, 1):
        if len(event) > MAX_REQUEST_BYTES:
            status = 1
            print(json.dumps({
                "errorType": "RequestTooLargeException",
                "errorMessage": f"Request must be smaller than {MAX_REQUEST_BYTES} bytes for the InvokeFunction operation",
            }), file=out, flush=True)
            continue
        t1 = time.perf_counter()
        request_id = api.enqueue(event)
        deadline = t1 + timeout_s
        while True:
            note = next_note(deadline, f"to event {i}")
            if note.kind in ("response", "error") and note.request_id == request_id:
                break
            if note.kind == "exit":
                raise crashed(f"while handling event {i}", note.exit_code)
        print(f"invoke {i}: {(note.at - t1) * 1000:.1f} ms", file=err, flush=True)
        body = note.body
        if note.kind == "error":
            status = 1
        elif len(body) > MAX_RESPONSE_BYTES:
            status = 1
            body = json.dumps({
                "errorType": "Function.ResponseSizeTooLarge",
                "errorMessage": "Response payload size exceeded maximum allowed payload size "
                f"({MAX_RESPONSE_BYTES} bytes).",
            }).encode()
        print(one_line_json(body), file=out, flush=True)
    return status


# ---------------------------------------------------------------- Lambda container images


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        # Its own process group: whatever the function started goes too.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
