"""Deploy as a user runs it: the real CLI against moto's standalone server on loopback
(AWS_ENDPOINT_URL), plus what the deployed function does that moto cannot run: the runtime
layer split (run in the local Lambda sandbox), the SnapStart hooks, the SAM template."""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def moto_server(tmp_path):
    """moto_server on 127.0.0.1 and the environment a user's shell would have for it."""
    port = _free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start: " + (tmp_path / "moto.log").read_text()[-2000:])
            time.sleep(0.2)
    # moto runs nothing without Docker: its "simple" Lambda answers every invoke itself.
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/config", method="POST",
                                                  data=json.dumps({"lambda": {"use_docker": False}}).encode()))
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _cli(env, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _client(env, service):
    import boto3

    return boto3.client(service, region_name="us-east-1", endpoint_url=env["AWS_ENDPOINT_URL"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_cli_deploy_twice_dry_run_and_invoke(moto_server, tiny_bert_build, tmp_path):
    """First deploy creates + publishes + aliases + URL; the second publishes nothing; a dry
    run of a change prints the update and changes nothing; invoke --function answers."""
    env = moto_server
    role = _client(env, "iam").create_role(RoleName="edge", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    first = _cli(env, "deploy", tiny_bert_build, "--function-name", "tiny", "--role", role, "--function-url", "--json")
    result = json.loads(first.stdout)
    assert result["version"] == "1" and result["changed"] and result["url"].startswith("https://")
    assert "+ create function tiny: python3.13, x86_64" in first.stderr
    assert "+ create alias live -> version <new version>" in first.stderr

    lam = _client(env, "lambda")
    config = lam.get_function(FunctionName="tiny")["Configuration"]
    assert (config["Runtime"], config["Handler"], config["Architectures"]) == ("python3.13", "handler.handler",
                                                                              ["x86_64"])
    assert lam.get_alias(FunctionName="tiny", Name="live")["FunctionVersion"] == "1"
    assert lam.get_function_url_config(FunctionName="tiny", Qualifier="live")["AuthType"] == "AWS_IAM"

    second = _cli(env, "deploy", tiny_bert_build, "--function-name", "tiny", "--function-url", "--json")
    assert json.loads(second.stdout)["changed"] is False
    assert "nothing to do" in second.stderr and "nothing new published" in second.stderr
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName="tiny")["Versions"]]
    assert versions == ["$LATEST", "1"]

    dry = _cli(env, "deploy", tiny_bert_build, "--function-name", "tiny", "--memory", "3008", "--dry-run")
    assert "+ update configuration of tiny: MemorySize" in dry.stderr and "dry run: nothing was changed" in dry.stderr
    assert lam.get_function(FunctionName="tiny")["Configuration"]["MemorySize"] == config["MemorySize"]
    assert len(lam.list_versions_by_function(FunctionName="tiny")["Versions"]) == 2

    event = tmp_path / "e.json"
    event.write_text(json.dumps({"inputs": "hello"}))
    called = _cli(env, "invoke", "--function", "tiny:live", "--event", event, "--event", event)
    lines = called.stdout.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(line) is not None for line in lines)


def test_runtime_layer_split_runs_like_the_whole_zip(tiny_bert_build, tmp_path):
    """--runtime-layer's two zips, run in the local Lambda sandbox with the layer under
    /opt, answer exactly as the whole zip does; the split is deterministic."""
    from builder.deploy.layer import split_zip
    from builder.local.lambda_runtime import invoke_zip
    from runtime.manifest import read

    work = tmp_path / "x86_64"
    shutil.copytree(tiny_bert_build, work)
    split = split_zip(work / "lambda.zip", read(work))
    again = split_zip(work / "lambda.zip", read(work))
    assert (split.layer_sha256, split.model_sha256) == (again.layer_sha256, again.model_sha256)
    with zipfile.ZipFile(split.model) as zf:
        names = set(zf.namelist())
    assert {"handler.py", "lambda.json", "model.json", "model.so"} <= names
    assert not any(n.startswith(("runtime/", "libtvm", "tokenizers")) for n in names)
    with zipfile.ZipFile(split.layer) as zf:
        assert {"python/runtime/__init__.py", "python/libtvm_runtime.so"} <= set(zf.namelist())

    events = [json.dumps({"inputs": ["a layered model", "two"]}).encode()]
    whole, layered = io.StringIO(), io.StringIO()
    assert invoke_zip(work / "lambda.zip", events, out=whole, err=io.StringIO()) == 0
    err = io.StringIO()
    assert invoke_zip(split.model, events, layers=[split.layer], out=layered, err=err) == 0, err.getvalue()[-2000:]
    assert json.loads(layered.getvalue()) == json.loads(whole.getvalue())

    # Without its layer the model zip cannot import the runtime: the layer is really used.
    err = io.StringIO()
    assert invoke_zip(split.model, events, out=io.StringIO(), err=err) == 2
    assert "runtime" in err.getvalue()


def test_snapstart_hooks_warm_before_and_reseed_after(tiny_bert_build, capsys):
    """Through the module Lambda's runtime provides: the model warms before the snapshot;
    after a restore the random state is fresh and the next call counts as a cold start."""
    import snapshot_restore_py as srp

    from runtime.lambda_handler import make_handler

    srp.get_before_snapshot().clear()
    srp.get_after_restore().clear()
    handler = make_handler(str(tiny_bert_build))
    [(before, _, _)] = srp.get_before_snapshot()
    [(after, _, _)] = srp.get_after_restore()
    calls = []
    real_execute = handler.model._execute  # what warm() runs (execute() also waits for the weights' check)
    handler.model._execute = lambda items: calls.append(len(items)) or real_execute(items)
    before()
    assert len(calls) == len(handler.model.seq_lengths)  # one warm call per compiled length
    assert "warmed" in capsys.readouterr().err

    class Context:
        aws_request_id = "r"

    handler({"inputs": "x"}, Context())
    handler({"inputs": "x"}, Context())
    random.seed(7)
    snapshot_value = random.random()
    random.seed(7)
    after()
    assert random.random() != snapshot_value
    handler({"inputs": "x"}, Context())
    cold = [json.loads(line)["ColdStart"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert cold == [1, 0, 1]
    srp.get_before_snapshot().clear()
    srp.get_after_restore().clear()


def test_sam_template_matches_the_bundle(tiny_bert_build):
    """template.yaml parses, names the zip, handler, runtime and architecture of lambda.zip
    and the sizing deploy uses; cfn-lint (with the SAM transform) finds no error."""
    import yaml

    from builder.deploy.bundle import open_bundle
    from builder.bundle.sizing import size_function

    path = tiny_bert_build / "template.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["Transform"] == "AWS::Serverless-2016-10-31"
    props = doc["Resources"]["ModelFunction"]["Properties"]
    bundle = open_bundle(tiny_bert_build)
    sizing = size_function(bundle.manifest, None)  # untimed: the template is the same build to build
    assert (tiny_bert_build / props["CodeUri"]).resolve() == bundle.path.resolve()
    assert (props["Handler"], props["Runtime"], props["Architectures"]) == (
        bundle.info["handler"], bundle.runtime, [bundle.architecture])
    assert (props["MemorySize"], props["Timeout"]) == (sizing.memory_mb, sizing.timeout_s)
    assert props["Environment"]["Variables"]["TVM_NUM_THREADS"] == str(sizing.threads)
    with zipfile.ZipFile(bundle.path) as zf:
        module, function = props["Handler"].rsplit(".", 1)
        assert f"def {function}" in zf.read(f"{module}.py").decode() or f"{function} = " in \
            zf.read(f"{module}.py").decode()
    if shutil.which("cfn-lint") is None:
        pytest.skip("cfn-lint is not installed (pip install -e '.[test]')")
    lint = subprocess.run(["cfn-lint", str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
