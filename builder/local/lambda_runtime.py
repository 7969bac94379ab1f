"""Run a Lambda zip locally the way AWS Lambda runs it.

The zip is unpacked into a task directory and started with the real runtime client
(``awslambdaric``, the library AWS ships in its Python base images) under the bundle's
own Python version and architecture, isolated from the host's packages, against a small
Runtime API server here. So a bundle that works here imports only what the zip holds,
with the interpreter ABI Lambda will use, through the same request/response protocol.
This module launches zips (invoke_zip) and Lambda images (invoke_image); the Runtime API
and the conversation through it are builder/local/runtime_api.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
from builder.local.runtime_api import ACCOUNT, DEFAULT_REGION, RuntimeAPI, check_events, converse, lambda_env, stop
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
    check_events(events)

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
    api: RuntimeAPI | None = None
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
        region = str(meta.get("region") or DEFAULT_REGION)
        api = RuntimeAPI(f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}", timeout_s)
        api.start()
        task_root = str(Path(task).resolve())
        env = {
            # What Lambda's python runtimes set; nothing of ours (no PYTHONPATH, no HOME
            # with caches, no proxies) so the function sees what it will see there.
            **lambda_env(api, name, region, memory_mb),
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

        return converse(start, api, events, out, err, timeout_s,
                         where=f"{zip_path} (handler {handler}, Python {python_version}, {arch})")
    finally:
        if proc is not None:
            stop(proc)
        if api is not None:
            api.close()
        shutil.rmtree(work, ignore_errors=True)


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
    check_events(events)
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
    region = DEFAULT_REGION
    api = RuntimeAPI(f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}", timeout_s)
    container = f"edgebundle-invoke-{secrets.token_hex(6)}"
    proc: subprocess.Popen | None = None
    env_dir = tempfile.mkdtemp(prefix="edgebundle-env-")  # mode 0700
    try:
        api.start()
        env = lambda_env(api, name, region, 2048)
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
            return converse(start, api, events, out, err, timeout_s, where=where)
    finally:
        if proc is not None:
            stop(proc)
        subprocess.run([eng.path, "rm", "-f", *(["-t", "0"] if eng.name == "podman" else []), container],
                       capture_output=True, stdin=subprocess.DEVNULL)
        shutil.rmtree(env_dir, ignore_errors=True)
        api.close()
