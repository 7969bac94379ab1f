"""Run a Lambda zip locally the way AWS Lambda runs it.

The zip is unpacked into a task directory and started with the real runtime client
(``awslambdaric``, the library AWS ships in its Python base images) under the bundle's
own Python version and architecture, isolated from the host's packages, against a small
Runtime API server here. So a bundle that works here imports only what the zip holds,
with the interpreter ABI Lambda will use, through the same request/response protocol.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import http.server
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import TextIO

from builder.cache import cache_dir
from builder.errors import InvokeError
from builder.fsutil import unzip, write_private
from builder.progress import QUIET, Progress
from builder import elf
from builder.bundle import wheels
from builder.bundle.formats.lambda_zip import ARCHITECTURES as LAMBDA_ARCHITECTURES
from builder.bundle.stage import WHEEL_GLIBC
from builder.local import sandbox
from builder.platforms import normalize_arch, platform_named

# The runtime client and its dependencies, pinned so every local run uses the same code.
# simplejson and snapshot-restore-py are awslambdaric 4.2.2's only requirements
# (simplejson>=3.20.1, snapshot-restore-py>=1.0.0); both have cp311/cp313 manylinux
# wheels for x86_64 and aarch64 (snapshot-restore-py is pure Python).
AWSLAMBDARIC_REQUIREMENTS = (
    "awslambdaric==4.2.2",
    "simplejson==4.3.0",
    "snapshot-restore-py==1.0.0",
)

RUNTIME_API_PREFIX = "/2018-06-01/runtime"
# Lambda's synchronous payload limits (request 6 MB, response 6 MB + framing).
MAX_REQUEST_BYTES = 6 * 1024 * 1024
MAX_RESPONSE_BYTES = 6291556
_ACCOUNT = "000000000000"
_DEFAULT_REGION = "us-east-1"

# Runs inside the sandboxed interpreter, started with -I -S: its sys.path holds only the
# standard library. Lambda's order is the task first, then the stdlib, the runtime last,
# so a bundle's own copy of a module shadows the runtime's, as there.
_BOOTSTRAP = """\
import sys
task_root, ric_dir, handler, opt = sys.argv[1:5]
# Lambda's order: the task root, then the layers' python dirs under /opt, then the runtime.
layers = [f"{opt}/python/lib/python%d.%d/site-packages" % sys.version_info[:2], f"{opt}/python"] if opt else []
sys.path[:] = [task_root, *layers, *sys.path, ric_dir]
sys.argv = ["/var/runtime/bootstrap", handler]
del task_root, ric_dir, opt, layers
from awslambdaric.__main__ import main
main(sys.argv)
"""


def bootstrap_argv(task_root: str, ric_dir: str, handler: str, opt: str) -> list[str]:
    """The arguments after the interpreter's flags that start awslambdaric as Lambda does:
    one place for every launcher (the local zip run and the stand-in image's bootstrap), so
    the code and the arguments it unpacks cannot drift apart. `opt` is where layers are
    merged ("" for none)."""
    return ["-c", _BOOTSTRAP, task_root, ric_dir, handler, opt]


# ---------------------------------------------------------------- bundle metadata


def _check_events(events: list[bytes]) -> None:
    for i, ev in enumerate(events, 1):
        try:
            json.loads(ev)
        except ValueError as e:
            raise InvokeError(
                f"event {i} is not valid JSON ({e}); Lambda accepts only JSON payloads",
                where=f"event {i}: {ev[:80]!r}",
                hint='pass a JSON document, e.g. {"inputs": "a sentence"}',
            ) from None


def _lambda_env(api: "_RuntimeAPI", name: str, region: str, memory_mb: int) -> dict:
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


def read_lambda_json(zip_path: Path) -> dict:
    """The bundle's ``lambda.json``, checked; InvokeError naming the zip when unusable."""
    where = str(zip_path)
    hint = "rebuild the bundle with edgebundle (lambda.json is written at the zip's root)"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            raw = zf.read("lambda.json")
    except FileNotFoundError:
        raise InvokeError("the Lambda zip does not exist", where=where, hint="check the path") from None
    except zipfile.BadZipFile:
        raise InvokeError("not a zip file", where=where, hint=hint) from None
    except KeyError:
        raise InvokeError("lambda.json is missing from the zip's root", where=where, hint=hint) from None
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise InvokeError(f"lambda.json is not valid JSON: {e}", where=f"{where}:lambda.json", hint=hint) from None
    if not isinstance(meta, dict):
        raise InvokeError("lambda.json is not a JSON object", where=f"{where}:lambda.json", hint=hint)
    problems = []
    if not isinstance(meta.get("python"), str):
        problems.append('"python" (e.g. "3.13")')
    if meta.get("architecture") not in LAMBDA_ARCHITECTURES:
        problems.append(f'"architecture" ({" or ".join(LAMBDA_ARCHITECTURES)})')
    handler = meta.get("handler")
    if not isinstance(handler, str) or "." not in handler.strip("."):
        problems.append('"handler" ("module.function")')
    memory = meta.get("memory_mb", 128)
    if not isinstance(memory, int) or isinstance(memory, bool) or not 128 <= memory <= 10240:
        problems.append('"memory_mb" (128-10240)')
    if problems:
        raise InvokeError(
            "lambda.json lacks or has an invalid " + ", ".join(problems),
            where=f"{where}:lambda.json",
            hint=hint,
        )
    return meta


def _unzip(zip_path: Path, dest: Path) -> None:
    unzip(zip_path, dest, error=lambda msg: InvokeError(msg, where=str(zip_path)))


# ---------------------------------------------------------------- runtime client


def awslambdaric_dir(python_version: str, arch: str, progress: Progress = QUIET) -> Path:
    """An importable directory with awslambdaric and its deps for that Python and arch."""
    arch = sandbox.normalize_arch(arch)
    key = hashlib.sha256("\n".join(AWSLAMBDARIC_REQUIREMENTS).encode()).hexdigest()[:12]
    final = cache_dir() / "awslambdaric" / f"{python_version}-{arch}-{key}"
    if final.is_dir():
        return final
    whls = wheels.fetch_wheels(
        list(AWSLAMBDARIC_REQUIREMENTS),
        python_version=python_version,
        platforms=wheels.manylinux_platforms(arch, WHEEL_GLIBC),
        progress=progress,
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    try:
        for whl in whls:
            wheels.unpack_wheel(whl, build)
        os.chmod(build, 0o755)
        try:
            os.rename(build, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return final


# ---------------------------------------------------------------- Runtime API server


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The function's process is killed on purpose (after the last event, on timeout or
        # Ctrl-C) while its connection may still be open; that is no server error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _RuntimeAPI:
    """The Lambda Runtime API, enough of it for one function instance.

    The server threads talk to the driver (``invoke_zip``) through two queues: invocations
    go out through ``pending`` (a blocked ``/next`` takes one), and everything the runtime
    reports comes back through ``notes`` as tuples, together with the process's exit
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
    def api(self) -> _RuntimeAPI:
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
        self.api.notes.put(("next", time.perf_counter()))
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
            self.api.notes.put(("init_error", body, self.headers.get("Lambda-Runtime-Function-Error-Type")))
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
            self.api.notes.put((parts[2], request_id, body, arrived))
            return
        self._send_json(404, {"errorType": "NotFound", "errorMessage": self.path})


# ---------------------------------------------------------------- driver


def _one_line_json(body: bytes) -> str:
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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        # Its own process group: whatever the function started goes too.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextlib.contextmanager
def _termination_as_interrupt():
    """SIGTERM/SIGHUP raise KeyboardInterrupt meanwhile, so cleanup runs as on Ctrl-C.

    Only where nobody else handles them and only in the main thread (the only place a
    Python signal handler can be installed); the previous handlers come back after.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):
            raise KeyboardInterrupt(signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def invoke_zip(
    zip_path: Path | str,
    events: list[bytes],
    *,
    progress: Progress = QUIET,
    out: TextIO | None = None,
    timeout_s: float = 900,
    err: TextIO | None = None,
    layers: list | tuple = (),
) -> int:
    """Run ``zip_path`` as Lambda would and send it ``events`` one after another.
    ``layers``: layer zips unpacked, in order, into the sandbox's /opt.

    One warm process answers all events (one cold start). Each answer is printed to
    ``out`` (default stdout) as one JSON document per line: the handler's result, or
    Lambda's error object ``{"errorType", "errorMessage", ...}`` when it raised. The
    function's logs and the timings (``init: X ms``, ``invoke N: Y ms``) go to ``err``
    (default stderr). Returns 0 when every event was answered without error, 1 when a
    handler raised, 2 when the function failed to initialise (its init error object is
    printed). A crash, a timeout or a broken bundle raises InvokeError.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    zip_path = Path(zip_path)
    meta = read_lambda_json(zip_path)
    if meta.get("deployable") is False:
        progress.warn(f"{zip_path} is marked not deployable to AWS Lambda (see lambda.json); running it locally anyway")
    _check_events(events)

    ric = awslambdaric_dir(meta["python"], meta["architecture"], progress)
    with _termination_as_interrupt():
        return _run_warm(zip_path, meta, events, ric, progress, out, err, timeout_s, [Path(p) for p in layers])


def _run_warm(
    zip_path: Path, meta: dict, events: list[bytes], ric: Path, progress: Progress, out: TextIO, err: TextIO,
    timeout_s: float, layers: list[Path] = (),
) -> int:
    python_version, arch, handler = meta["python"], meta["architecture"], meta["handler"]
    memory_mb = meta.get("memory_mb", 128)
    work = Path(tempfile.mkdtemp(prefix="edgebundle-task-"))
    task, opt = work / "task", work / "opt"
    api: _RuntimeAPI | None = None
    proc: subprocess.Popen | None = None
    try:
        _unzip(zip_path, task)
        for layer in layers:  # later layers overwrite earlier ones, as Lambda merges them
            unzip(layer, opt, error=lambda msg, where=str(layer): InvokeError(msg, where=where))
        # The same audit the build ran: a zip edited after the build (an x86_64 wheel slipped
        # into an arm64 bundle is the classic) is refused before anything runs.
        trees = [(task, zip_path)] + ([(opt, ", ".join(map(str, layers)))] if layers else [])
        for tree, what in trees:
            elf.audit_tree(tree, machine=platform_named(arch).elf_machine,
                           max_glibc=meta.get("platform_glibc") if meta.get("deployable", True) else None,
                           what=str(what))
        library_path = [task, task / "lib"] + ([opt / "lib"] if layers else [])
        argv = sandbox.python_command(python_version, arch, progress, library_path=library_path)
        name = str(meta.get("name") or "edgebundle-local")
        region = str(meta.get("region") or _DEFAULT_REGION)
        api = _RuntimeAPI(f"arn:aws:lambda:{region}:{_ACCOUNT}:function:{name}", timeout_s)
        api.start()
        task_root = str(Path(task).resolve())
        env = {
            # What Lambda's python runtimes set; nothing of ours (no PYTHONPATH, no HOME
            # with caches, no proxies) so the function sees what it will see there.
            **_lambda_env(api, name, region, memory_mb),
            "LAMBDA_TASK_ROOT": task_root,
            "LAMBDA_RUNTIME_DIR": str(Path(ric).resolve()),
            "_HANDLER": handler,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{python_version}",
            "LANG": "en_US.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LD_LIBRARY_PATH": ":".join(str(Path(p).resolve()) for p in library_path),
            "HOME": "/tmp",
        }
        env.update(sandbox.emulator_env(arch))
        cmd = [*argv, *bootstrap_argv(task_root, str(Path(ric).resolve()), handler,
                                      str(opt.resolve()) if layers else "")]

        def start() -> subprocess.Popen:
            nonlocal proc
            proc = subprocess.Popen(cmd, cwd=task, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            return proc

        return _converse(start, api, events, out, err, timeout_s,
                         where=f"{zip_path} (handler {handler}, Python {python_version}, {arch})")
    finally:
        if proc is not None:
            _stop(proc)
        if api is not None:
            api.close()
        shutil.rmtree(work, ignore_errors=True)


def _converse(start, api: _RuntimeAPI, events: list[bytes], out: TextIO, err: TextIO, timeout_s: float,
              where: str) -> int:
    """Start the function's process (start() -> Popen, its output on stdout) against `api`,
    wait for its init, send `events` one by one and print each answer; the exit status of
    invoke_zip. The caller stops the process."""
    t0 = time.perf_counter()
    proc = start()
    pump = _LogPump(proc.stdout, err)
    pump.start()
    threading.Thread(
        target=lambda p=proc: api.notes.put(("exit", p.wait())), name="lambda-exit", daemon=True
    ).start()

    def crashed(when: str, rc: int) -> InvokeError:
        pump.join(timeout=2)
        return InvokeError(
            f"the function's process exited with code {rc} {when}; its last output:\n    {pump.text()}",
            where=where,
            hint="see the log above; on Lambda this shows as Runtime.ExitError",
        )

    def timed_out(when: str) -> InvokeError:
        _stop(proc)
        pump.join(timeout=2)
        return InvokeError(
            f"no answer {when} within {timeout_s:g} s; the function's last output:\n    {pump.text()}",
            where=where,
            hint="the handler hangs or is too slow; Lambda would stop it at its timeout too",
        )

    def next_note(deadline: float, when: str):
        try:
            return api.notes.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            raise timed_out(when) from None

    # Init: from process start until the runtime first asks for work (or reports).
    deadline = t0 + timeout_s
    while True:
        note = next_note(deadline, "during init")
        if note[0] == "next":
            print(f"init: {(note[1] - t0) * 1000:.0f} ms", file=err, flush=True)
            break
        if note[0] == "init_error":
            print(_one_line_json(note[1]), file=out, flush=True)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            pump.join(timeout=2)
            return 2
        if note[0] == "exit":
            raise crashed("during init", note[1])

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
            if note[0] in ("response", "error") and note[1] == request_id:
                break
            if note[0] == "exit":
                raise crashed(f"while handling event {i}", note[1])
        print(f"invoke {i}: {(note[3] - t1) * 1000:.1f} ms", file=err, flush=True)
        body = note[2]
        if note[0] == "error":
            status = 1
        elif len(body) > MAX_RESPONSE_BYTES:
            status = 1
            body = json.dumps({
                "errorType": "Function.ResponseSizeTooLarge",
                "errorMessage": "Response payload size exceeded maximum allowed payload size "
                f"({MAX_RESPONSE_BYTES} bytes).",
            }).encode()
        print(_one_line_json(body), file=out, flush=True)
    return status


# ---------------------------------------------------------------- Lambda container images


def _archive_ref(archive: Path) -> str | None:
    """The image name an OCI archive carries (its index's ref.name annotation), if any."""
    from builder.container.images import archive_index

    try:
        return archive_index(archive)["ref"]
    except ValueError:
        return None


def _load_archive(eng, archive: Path, progress: Progress) -> str:
    """`podman/docker load` an OCI archive; the reference it was loaded as."""
    from builder.container.images import loaded_ref

    with progress.step(f"{eng.name} load {archive.name}"):
        out = eng.run([eng.path, "load", "-i", str(archive)], f"loading {archive}").stdout
    ref = loaded_ref(out)
    if ref:
        return ref
    raise InvokeError(f"{eng.name} loaded {archive} but did not say as what:\n    {out.strip()}", where=str(archive))


def invoke_image(
    image: str | Path,
    events: list[bytes],
    *,
    engine: str | None = None,
    progress: Progress = QUIET,
    out: TextIO | None = None,
    err: TextIO | None = None,
    timeout_s: float = 900,
) -> int:
    """Run a Lambda container image (a tag, or an OCI archive to load) as Lambda would:
    the container's own entrypoint (the base image's runtime interface client) against the
    Runtime API served here, with the same events, output and exit status as invoke_zip."""
    from builder.container.engine import find_engine

    out = out or sys.stdout
    err = err or sys.stderr
    _check_events(events)
    eng = find_engine(engine, run=True)
    loaded = None  # a reference this call added to the engine's store, removed after
    if isinstance(image, Path):
        named = _archive_ref(image)
        had = named is not None and eng.has(named)
        ref = _load_archive(eng, image, progress)
        loaded = None if had else ref
    else:
        ref = image
    try:
        return _run_image(eng, ref, str(image), events, out, err, timeout_s)
    finally:
        if loaded is not None:
            subprocess.run([eng.path, "rmi", loaded], capture_output=True, stdin=subprocess.DEVNULL)


def _run_image(eng, ref: str, where: str, events: list[bytes], out: TextIO, err: TextIO, timeout_s: float) -> int:
    try:
        info = eng.inspect(ref)
    except Exception as e:  # noqa: BLE001 - an unknown reference: say so in our words
        raise InvokeError(f"no such image {ref}", where=where,
                          hint="build it with `edgebundle image build OUT/<target>/lambda-image`, or pass its "
                               "OCI archive") from e
    labels = (info.get("Config") or {}).get("Labels") or info.get("Labels") or {}
    if labels.get("io.edgebundle.format") not in (None, "lambda-image"):
        raise InvokeError(f"{ref} is a {labels['io.edgebundle.format']} image, not a Lambda image", where=where,
                          hint="serving images answer HTTP: podman run -p 127.0.0.1:8080:8080 IMAGE")
    arch = normalize_arch(info.get("Architecture") or "amd64")
    name = "edgebundle-local"
    region = _DEFAULT_REGION
    api = _RuntimeAPI(f"arn:aws:lambda:{region}:{_ACCOUNT}:function:{name}", timeout_s)
    container = f"edgebundle-invoke-{secrets.token_hex(6)}"
    proc: subprocess.Popen | None = None
    env_dir = tempfile.mkdtemp(prefix="edgebundle-env-")  # mode 0700
    try:
        api.start()
        env = _lambda_env(api, name, region, 2048)
        if arch == "arm64":
            env.update(sandbox.emulator_env(arch))  # QEMU_CPU: fault on what Graviton2 lacks
        # The function's environment goes in a private file, not in -e arguments: every
        # user of the machine can read a command line (ps, /proc/PID/cmdline).
        env_file = Path(env_dir) / "env"
        write_private(env_file, "".join(f"{k}={v}\n" for k, v in sorted(env.items())))
        # Host network: the Runtime API listens on this machine's loopback, as the
        # emulator does beside a function on Lambda.
        cmd = [eng.path, "run", "--rm", "--name", container, "--network", "host", "--pull", "never",
               "--env-file", str(env_file), ref]
        where = f"{ref} ({arch}, {eng.name})"

        def start() -> subprocess.Popen:
            nonlocal proc
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            return proc

        with _termination_as_interrupt():
            return _converse(start, api, events, out, err, timeout_s, where=where)
    finally:
        if proc is not None:
            _stop(proc)
        subprocess.run([eng.path, "rm", "-f", *(["-t", "0"] if eng.name == "podman" else []), container],
                       capture_output=True, stdin=subprocess.DEVNULL)
        shutil.rmtree(env_dir, ignore_errors=True)
        api.close()
