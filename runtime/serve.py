"""`python -m runtime.serve MODEL_DIR`: the model server (serving images, edge installs,
`edgebundle serve`).

HTTP comes from waitress (pinned and vendored beside runtime/ in images and edge installs;
the Lambda zip does not carry it): a production WSGI server in pure Python whose own
threads buffer whole requests before the application sees them, so slow clients hold no
worker, and whose parser refuses an oversize body from its Content-Length, before reading it.
The application itself is runtime/server.py (standard library only).

SIGTERM (or Ctrl-C): stop listening (connections already queued in the listen backlog are
still accepted), answer everything received, then exit 0; `--drain-timeout-s` bounds it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .server import Options

DEFAULT_PORT = 8080  # SageMaker's
# The serving knobs' defaults are Options' (runtime/server.py), written once.
DEFAULTS = Options()
WAITRESS_MISSING = ("the model server needs waitress, which serving images and edge installs carry; "
                    "on a development machine: pip install waitress")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.serve", description=(
        "Serve one compiled model over HTTP: SageMaker (/ping, /invocations), the Open Inference Protocol "
        "(KServe v2: /v2/health/*, /v2/models/NAME[/infer]) and Prometheus /metrics."))
    p.add_argument("model_dir", type=Path, help="a built target directory (model.json and its files)")
    p.add_argument("command", nargs="?", choices=["serve"],
                   help="ignored: SageMaker starts serving containers with the argument `serve`")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serving options, shared with `edgebundle serve`."""
    p.add_argument("--name", help="the model's name in /v2/models/NAME (default: the build's model name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the server, as images do)")
    p.add_argument("--port", type=int,
                   help=f"port, 0-65535 (default: $SAGEMAKER_BIND_TO_PORT, else {DEFAULT_PORT}, SageMaker's)")
    p.add_argument("--max-batch", type=int,
                   help="most rows per model call (default: the model's max batch; 1 turns batching off)")
    p.add_argument("--batch-window-ms", type=float, default=DEFAULTS.batch_window_ms,
                   help=f"how long an idle model waits for requests still being decoded to join a batch "
                        f"(default {DEFAULTS.batch_window_ms:g})")
    p.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                   help=f"rows (inputs) waiting for the model before new requests get 503 (default {DEFAULTS.max_queue})")
    p.add_argument("--max-inputs", type=int, default=DEFAULTS.max_inputs,
                   help=f"most texts or images in one task-mode request; more get 400 (default {DEFAULTS.max_inputs})")
    p.add_argument("--timeout-s", type=float, default=DEFAULTS.timeout_s,
                   help=f"most time a request may wait for its answer; then 504 (default {DEFAULTS.timeout_s:g})")
    p.add_argument("--max-body-mb", type=float, default=6.0,
                   help="largest request body; larger ones get 413 before being read (default 6, Lambda's)")
    p.add_argument("--idle-timeout-s", type=float, default=60.0,
                   help="close connections idle (or stalled mid-request) this long (default 60)")
    p.add_argument("--token-file", type=Path,
                   help="require `Authorization: Bearer <token>` (the file's first line) on every request "
                        "except the health probes /ping and /v2/health/*")
    p.add_argument("--drain-timeout-s", type=float, default=30.0,
                   help="on SIGTERM, most time spent finishing received requests (default 30)")


def python_mismatch() -> str | None:
    """Why this Python cannot serve the image: its packages (compiled extensions such as
    Pillow's and tokenizers') were vendored for EDGEBUNDLE_PYTHON, which the serving image
    sets; a --base-image of another version would fail on an import deep in a request."""
    wanted = os.environ.get("EDGEBUNDLE_PYTHON")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not wanted or wanted == running:
        return None
    return (f"this image's packages were vendored for python{wanted}, but its base image runs python{running}; "
            f"rebuild with --python {running}, or use a --base-image whose python3 is {wanted}")


def serve(model_dir: Path, args, ready_message=None) -> int:
    """Run the server until SIGTERM/SIGINT; the exit status."""
    mismatch = python_mismatch()
    if mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return 2
    for name, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                        ("--max-inputs", args.max_inputs),
                        ("--timeout-s", args.timeout_s), ("--max-body-mb", args.max_body_mb),
                        ("--idle-timeout-s", args.idle_timeout_s)):
        if value is not None and value <= 0:
            print(f"error: {name} must be positive", file=sys.stderr)
            return 2
    if args.batch_window_ms < 0 or args.drain_timeout_s < 0:
        print("error: --batch-window-ms and --drain-timeout-s must be 0 or more", file=sys.stderr)
        return 2
    if args.port is None:
        given = os.environ.get("SAGEMAKER_BIND_TO_PORT", str(DEFAULT_PORT))
        if not given.isdigit():
            print(f"error: SAGEMAKER_BIND_TO_PORT={given!r} is not a port number", file=sys.stderr)
            return 2
        args.port = int(given)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port (0-65535)", file=sys.stderr)
        return 2
    try:
        import waitress
        from waitress import wasyncore
        from waitress.channel import HTTPChannel
    except ImportError:
        print(f"error: {WAITRESS_MISSING}", file=sys.stderr)
        return 2
    from .manifest import ManifestError
    from .server import App

    token = None
    if getattr(args, "token_file", None):
        try:
            token = (Path(args.token_file).read_text().splitlines() or [""])[0].strip()
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: cannot read --token-file {args.token_file}: {getattr(e, 'strerror', None) or e}",
                  file=sys.stderr)
            return 2
        if len(token) < 16:
            print(f"error: the token in {args.token_file} is shorter than 16 characters; use a random one "
                  "(e.g. head -c 32 /dev/urandom | base64)", file=sys.stderr)
            return 2
    try:
        app = App(model_dir, name=args.name,
                  options=Options(max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                                  max_queue=args.max_queue, max_inputs=args.max_inputs, timeout_s=args.timeout_s,
                                  token=token))
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # Each request waiting in the queue or running in a batch holds one waitress thread, so
    # there are enough of them that the queue (not waitress's own) is what fills up.
    threads = args.max_queue + app.max_batch + 4
    try:
        server = waitress.create_server(
            app, host=args.host, port=args.port, threads=threads, ident="edgebundle",
            max_request_body_size=int(args.max_body_mb * 1024 * 1024), channel_timeout=args.idle_timeout_s,
            cleanup_interval=max(1, min(30, args.idle_timeout_s / 2)), connection_limit=max(100, 2 * threads),
            clear_untrusted_proxy_headers=True, asyncore_use_poll=True)
    except (OSError, ValueError) as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {getattr(e, 'strerror', None) or e}",
              file=sys.stderr)
        return 1
    if not hasattr(server, "effective_port"):  # a name resolving to several addresses (::1 and 127.0.0.1)
        server.close()
        print(f"error: --host {args.host} resolves to several addresses; give one, e.g. 127.0.0.1 or ::1",
              file=sys.stderr)
        return 2
    server.channel_class = _json_error_channel(HTTPChannel, app)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    loader = threading.Thread(target=app.load, name="edgebundle-load", daemon=True)
    loader.start()
    app.event("listening", model=app.name, host=args.host, port=int(server.effective_port), pid=os.getpid())
    if ready_message:
        print(ready_message.format(port=server.effective_port), file=sys.stderr, flush=True)

    def turn() -> None:
        wasyncore.loop(timeout=0.1, map=server._map, use_poll=True, count=1)

    while not stop.is_set() and app.load_error is None:
        turn()
    if app.load_error is not None:
        e = app.load_error
        app.event("load_failed", error=f"{type(e).__name__}: {e}")
        print(f"error: cannot load the model in {model_dir}: {e}", file=sys.stderr)
        return 1
    return _drain(app, server, HTTPChannel, args.drain_timeout_s, turn)


def _drain(app, server, channel_type, timeout_s: float, turn) -> int:
    """Stop listening, answer everything received, exit."""
    from waitress import wasyncore

    started = time.monotonic()
    app.draining = True
    while True:  # connections the kernel completed but nobody accepted yet are requests too
        pair = server.accept()
        if pair is None:
            break
        conn, addr = pair
        server.set_socket_options(conn)
        server.channel_class(server, conn, server.fix_addr(addr), server.adj, map=server._map)
    wasyncore.dispatcher.close(server)  # the listening socket; the wake-up trigger stays
    app.event("draining", in_flight=app.metrics.in_flight)

    def pending() -> bool:
        if app.busy():
            return True
        return any(isinstance(c, channel_type) and (c.requests or c.total_outbufs_len or c.request is not None)
                   for c in list(server._map.values()))

    deadline = started + timeout_s
    while pending() and time.monotonic() < deadline:
        turn()
        # With the listening socket gone the server no longer closes idle connections on its
        # own: a client stalled mid-request would hold the exit until the drain timeout.
        server.maintenance(time.time())
    left = pending()
    if app.batcher is not None:
        app.batcher.close()
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
    for channel in list(server._map.values()):
        if isinstance(channel, channel_type):
            channel.close()
    app.event("stopped", drained=not left, seconds=round(time.monotonic() - started, 3))
    return 0


def _json_error_channel(base, app):
    """waitress's own refusals (413 oversize body, 400 malformed HTTP) as JSON errors,
    counted and logged like the application's answers; while draining, every answer closes
    its connection (a WSGI application may not send Connection: close itself), so clients
    on keep-alive connections reconnect and find the next server instead of holding the
    drain open with requests answered 503."""
    from waitress.task import ErrorTask, WSGITask

    class DrainingTask(WSGITask):
        def build_response_header(self):
            if app.draining:
                self.set_close_on_finish()
            return super().build_response_header()

    class JsonErrorTask(ErrorTask):
        def execute(self):
            e = self.request.error
            body = json.dumps({"error": f"{e.reason}: {e.body}"}).encode()
            self.status = f"{e.code} {e.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)
            app.metrics.observe_request("refused", e.code, 0.0)
            # A start line waitress could not parse leaves no command or path on the request.
            method, path = (getattr(self.request, a, None) or "-" for a in ("command", "path"))
            app.log_request("-", method, path, e.code, 0.0)

    return type("JsonErrorChannel", (base,), {"error_task_class": JsonErrorTask, "task_class": DrainingTask})


def main(argv=None) -> int:
    args = _parser().parse_intermixed_args(argv)
    return serve(args.model_dir, args)


if __name__ == "__main__":
    sys.exit(main())
