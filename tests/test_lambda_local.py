"""builder.local.lambda_runtime: hand-made Lambda zips run through awslambdaric and the Runtime API."""
from __future__ import annotations

import io
import shutil
import json
import sys
import zipfile

import pytest

from builder.errors import InvokeError
from builder.local.lambda_runtime import invoke_zip, read_lambda_json

HOST_PYTHON = "%d.%d" % sys.version_info[:2]
HOST_PREFIXES = (sys.prefix, sys.base_prefix, "/usr/lib/python3", "/usr/local/lib/python3", "/root/.pyenv")

ECHO_HANDLER = '''
import os, sys, time
print("cold start")  # a log line: must reach stderr, not the answers

def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail: %s" % event["fail"])
    if event.get("crash"):
        print("about to crash", flush=True)
        os._exit(3)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("raw"):
        return b"not json"
    try:
        import numpy
        numpy_ok = True
    except ImportError:
        numpy_ok = False
    return {
        "echo": event,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "python": "%d.%d" % sys.version_info[:2],
        "sys_path": sys.path,
        "numpy": numpy_ok,
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in ("LAMBDA_TASK_ROOT", "_HANDLER", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                                                "AWS_REGION", "TZ", "HOME", "PYTHONPATH", "AWS_EXECUTION_ENV")},
    }
'''

BROKEN_HANDLER = '''
import module_that_does_not_exist

def handler(event, context):
    return event
'''


def _zip(path, handler_src, python, **meta):
    info = {"python": python, "architecture": "x86_64", "handler": "handler.handler",
            "deployable": True, "memory_mb": 1769, **meta}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("handler.py", handler_src)
        zf.writestr("lambda.json", json.dumps(info))
    return path


@pytest.fixture(scope="session")
def zips(tmp_path_factory):
    d = tmp_path_factory.mktemp("lambda-zips")
    return {
        python: {
            "echo": _zip(d / f"echo-{python}.zip", ECHO_HANDLER, python),
            "broken": _zip(d / f"broken-{python}.zip", BROKEN_HANDLER, python),
        }
        for python in (HOST_PYTHON, "3.13")
    }


def _run(zip_path, events, **kw):
    out, err = io.StringIO(), io.StringIO()
    rc = invoke_zip(zip_path, [json.dumps(e).encode() for e in events], out=out, err=err, **kw)
    return rc, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


PYTHONS = [HOST_PYTHON, pytest.param("3.13", marks=pytest.mark.slow)]


@pytest.fixture(scope="session")
def echo_runs(zips):
    """One warm run per Python, shared by the checks below (each run is a cold start)."""
    cache = {}

    def get(python):
        if python not in cache:
            cache[python] = _run(zips[python]["echo"], [{"n": 1}, {"fail": "second"}, {"n": 3}, {"raw": True}])
        return cache[python]

    return get


@pytest.mark.parametrize("python", PYTHONS)
def test_responses_in_order_and_errors_keep_process_warm(echo_runs, python):
    rc, docs, err = echo_runs(python)
    assert rc == 1  # one event errored
    assert len(docs) == 4
    first, error, third, raw = docs
    assert first["echo"] == {"n": 1} and third["echo"] == {"n": 3}
    assert first["python"] == python
    # Same warm process for every event (one cold start), distinct request ids.
    assert first["pid"] == third["pid"]
    assert first["request_id"] != third["request_id"]
    assert 0 < first["remaining_ms"] <= 900_000
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "asked to fail: second"
    assert error["requestId"] and isinstance(error["stackTrace"], list)
    assert raw == "not json"  # a non-JSON answer is printed as a JSON string
    assert err.count("cold start") == 1
    assert "init: " in err and "invoke 1: " in err and "invoke 4: " in err
    assert "[ERROR] ValueError: asked to fail: second" in err


@pytest.mark.parametrize("python", PYTHONS)
def test_environment_is_lambdas_and_nothing_of_the_host(echo_runs, python):
    _, docs, _ = echo_runs(python)
    info = docs[0]
    env = info["env"]
    assert env["_HANDLER"] == "handler.handler"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "1769"
    assert env["TZ"] == ":UTC" and env["HOME"] == "/tmp" and env["PYTHONPATH"] is None
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{python}"
    assert env["AWS_REGION"]
    task_root = env["LAMBDA_TASK_ROOT"]
    assert info["cwd"] == task_root
    path = info["sys_path"]
    assert path[0] == task_root
    assert "awslambdaric" in path[-1]  # the runtime last, as on Lambda
    assert not any("site-packages" in p or "dist-packages" in p for p in path)
    assert info["numpy"] is False  # installed on the host, not in the zip
    if python != HOST_PYTHON:
        assert not any(p.startswith(HOST_PREFIXES) for p in path), path


@pytest.mark.parametrize("python", PYTHONS)
def test_init_error(zips, python):
    rc, docs, err = _run(zips[python]["broken"], [{"n": 1}])
    assert rc == 2
    [doc] = docs
    assert doc["errorType"] == "Runtime.ImportModuleError"
    assert "module_that_does_not_exist" in doc["errorMessage"]
    assert "Runtime.ImportModuleError" in err


def test_crash_is_an_invoke_error_with_the_output_tail(zips):
    with pytest.raises(InvokeError) as exc:
        _run(zips[HOST_PYTHON]["echo"], [{"n": 1}, {"crash": True}, {"n": 3}])
    msg = str(exc.value)
    assert "exited with code 3 while handling event 2" in msg
    assert "about to crash" in msg


def test_timeout_is_an_invoke_error(zips):
    with pytest.raises(InvokeError, match="no answer to event 1 within 1 s"):
        _run(zips[HOST_PYTHON]["echo"], [{"sleep": 30}], timeout_s=1)


def test_no_events_just_initialises(zips):
    rc, docs, err = _run(zips[HOST_PYTHON]["echo"], [])
    assert (rc, docs) == (0, [])
    assert "init: " in err


def test_bad_bundles_and_events(tmp_path, zips):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("handler.py", ECHO_HANDLER)
    with pytest.raises(InvokeError, match="lambda.json is missing") as exc:
        read_lambda_json(plain)
    assert str(plain) in str(exc.value)

    invalid = _zip(tmp_path / "invalid.zip", ECHO_HANDLER, HOST_PYTHON, architecture="sparc", handler="nodot")
    with pytest.raises(InvokeError, match='"architecture".*"handler"'):
        read_lambda_json(invalid)

    with pytest.raises(InvokeError, match="event 2 is not valid JSON"):
        invoke_zip(zips[HOST_PYTHON]["echo"], [b"{}", b"not json"], out=io.StringIO(), err=io.StringIO())


@pytest.mark.slow
@pytest.mark.emulated_arm64
@pytest.mark.skipif(not (shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")),
                    reason="needs qemu-user (apt-get install qemu-user)")
def test_arm64_bundle_runs_under_qemu(tmp_path):
    zip_path = _zip(tmp_path / "arm64.zip", ECHO_HANDLER + '''
import platform
_echo = handler
def handler(event, context):
    return {**_echo(event, context), "machine": platform.machine()}
''', "3.13", architecture="arm64")
    rc, docs, err = _run(zip_path, [{"n": 1}, {"fail": "x"}])
    assert rc == 1
    assert docs[0]["machine"] == "aarch64" and docs[0]["python"] == "3.13" and docs[0]["numpy"] is False
    assert not any(p.startswith(HOST_PREFIXES) for p in docs[0]["sys_path"])
    assert docs[1]["errorType"] == "ValueError"
