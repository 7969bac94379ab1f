"""`edgebundle deploy` and `invoke --function` against moto's mocked AWS (no network).

moto checks what AWS would hold (functions, versions, aliases, URLs, layers, S3, ECR); the
failures moto cannot produce (access denied, throttling, an update in progress, a role not
yet assumable, full code storage, a function error) are stubbed with botocore event
handlers on the clients of a `Clients(factory=...)`, so the product's own retry and error
code runs on them.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import oci_archive

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

import botocore.exceptions
import botocore.retries.standard
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.response import StreamingBody
from moto import mock_aws

import builder.deploy.aws as deploy_aws
import builder.deploy.plan as deploy_plan
from builder.bundle.context import image_name
from builder.deploy import deploy
from builder.deploy.aws import Clients
from builder.deploy.executor import Pusher
from builder.deploy.layer import LAYER_ZIP, MODEL_ZIP, layer_name
from builder.deploy.remote import invoke_function
from builder.bundle.sizing import size_function, vcpus
from builder.errors import DeployError
from builder.options import DeployOptions
from builder.progress import Progress
from runtime.manifest import read as read_manifest

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
READ_ONLY = ("Get", "List", "Head", "Describe")
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


# -- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    """Fake credentials and a fixed region; nothing of the developer's AWS setup leaks in."""
    for key in list(os.environ):
        if key.startswith("AWS_ENDPOINT_URL") or key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION"):
            monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)


def _account(**config):
    with mock_aws(config=config or None):
        iam = boto3.client("iam", region_name=REGION)
        yield iam.create_role(RoleName="edgebundle-test", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]


@pytest.fixture
def role():
    """A fresh mocked account with an execution role; yields the role's ARN."""
    yield from _account()


@pytest.fixture
def role_no_docker():
    """The same, with moto's Docker-less Lambda: an invoke answers with its event (this
    backend cannot attach layers, so only the invoke tests use it)."""
    yield from _account(**{"lambda": {"use_docker": False}})


@pytest.fixture
def lam(role):
    return boto3.client("lambda", region_name=REGION)


def error_response(code: str, message: str, status: int = 400):
    """What a before-call handler returns to make botocore raise this AWS error."""
    return (AWSResponse("https://stub.invalid", status, {}, None),
            {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}})


class FailTimes:
    """A before-call handler: answers `times` calls with an AWS error, then lets them through."""

    def __init__(self, times: int, code: str, message: str):
        self.times, self.code, self.message = times, code, message
        self.hits = 0

    def __call__(self, **kwargs):
        self.hits += 1
        return error_response(self.code, self.message) if self.hits <= self.times else None


class Recorder:
    """A `Clients` factory: boto3 clients in the mocked account that record every operation
    (with its parameters) and answer the stubbed ones."""

    def __init__(self, config: Config | None = None):
        self.config = config
        self.calls: list[tuple[str, str, dict]] = []  # (service, operation, API parameters)
        self.stubs: list[tuple[str, object]] = []  # (event name, handler)

    def stub(self, event: str, handler) -> Recorder:
        self.stubs.append((event, handler))
        return self

    def __call__(self, service: str):
        client = boto3.client(service, region_name=REGION, config=self.config)
        client.meta.events.register("before-parameter-build", self._record)
        for event, handler in self.stubs:
            if event.split(".")[1] == client.meta.service_model.service_id.hyphenize():
                client.meta.events.register(event, handler)
        return client

    def _record(self, params, model, event_name, **kwargs):
        self.calls.append((event_name.split(".")[1], model.name, dict(params)))

    def ops(self, service: str | None = None) -> list[str]:
        return [op for s, op, _ in self.calls if service in (None, s)]

    def params(self, op: str) -> list[dict]:
        return [p for _, o, p in self.calls if o == op]


def run_deploy(path, clients=None, pusher=None, **options):
    """deploy() as the CLI runs it; returns (result, what it printed)."""
    out = io.StringIO()
    options.setdefault("function_name", "fn")
    result = deploy(Path(path), DeployOptions(**options), Progress(stream=out),
                    clients=clients or Clients(region=REGION), pusher=pusher)
    return result, out.getvalue()


def no_aws(calls: list):
    """A Clients factory that fails the test if anything asks it for a client."""
    def factory(service):
        calls.append(service)
        raise AssertionError(f"an AWS client ({service}) was made")
    return Clients(region=REGION, factory=factory)


def lambda_sha(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def versions(lam, function: str) -> list[dict]:
    return [v for v in lam.list_versions_by_function(FunctionName=function)["Versions"] if v["Version"] != "$LATEST"]


def expected_sizing(build: Path, memory_mb=None):
    return size_function(read_manifest(build), json.loads((build / "timing.json").read_text()), memory_mb)


def copy_build(build: Path, dest: Path) -> Path:
    """A private copy of a build (deploy writes the split zips, image contexts beside it)."""
    shutil.copytree(build, dest)
    return dest


def small_target(build: Path, dest: Path, lambda_info: dict | None = None, target: dict | None = None) -> Path:
    """A target dir with the build's model.json (its target replaced by `target`) and, when
    `lambda_info` is given, a small lambda.zip holding that lambda.json."""
    dest.mkdir()
    data = json.loads((build / "model.json").read_text())
    if target:
        data["target"] = {**data["target"], **target}
    (dest / "model.json").write_text(json.dumps(data))
    if lambda_info is not None:
        with zipfile.ZipFile(build / "lambda.zip") as zf:
            info = {**json.loads(zf.read("lambda.json")), **lambda_info}
            handler = zf.read("handler.py")
        with zipfile.ZipFile(dest / "lambda.zip", "w") as zf:
            zf.writestr("lambda.json", json.dumps(info))
            zf.writestr("handler.py", handler)
    return dest


# -- a Lambda image, without compiling again ----------------------------------------------------

@pytest.fixture(scope="module")
def lambda_image(tiny_bert_build, tmp_path_factory):
    """A copy of the tiny BERT build with a lambda-image context and a minimal valid OCI
    archive of it. Returns (target dir, image.json, the OCI manifest as sent to ECR)."""
    from builder.bundle.formats import FORMATS
    from builder.compiler.targets import resolve_target
    from builder.options import BuildOptions

    tdir = copy_build(tiny_bert_build, tmp_path_factory.mktemp("image") / "x86_64")
    FORMATS["lambda-image"].build(tdir, resolve_target("x86_64"), BuildOptions(), Progress(quiet=True))
    image = json.loads((tdir / "lambda-image" / "image.json").read_text())
    manifest = oci_archive.write(tdir / "lambda-image.oci.tar", image["tag"])
    return tdir, image, manifest


class RecordingPusher:
    """Stands in for skopeo: records each push and registers the image in moto's ECR."""

    def __init__(self, manifest: str):
        self.manifest = manifest
        self.calls: list[dict] = []

    def push(self, archive, ref, auth, platform, progress):
        self.calls.append({"archive": Path(archive), "ref": ref, "auth": auth, "platform": platform})
        repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
        boto3.client("ecr", region_name=REGION).put_image(repositoryName=repository, imageManifest=self.manifest,
                                                          imageTag=tag)


# -- 1-4: zips ------------------------------------------------------------------------------

def test_new_zip_direct_upload(tiny_bert_build, role, lam):
    """A first deploy creates the function from lambda.json and the sizing rule, publishes
    version 1 with its fingerprint and points alias live at it."""
    rec = Recorder()
    result, out = run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role)
    zip_path = tiny_bert_build / "lambda.zip"
    with zipfile.ZipFile(zip_path) as zf:
        info = json.loads(zf.read("lambda.json"))
    sizing = expected_sizing(tiny_bert_build)

    (create,) = rec.params("CreateFunction")
    assert create["Code"]["ZipFile"] == zip_path.read_bytes() and "S3Bucket" not in create["Code"]
    assert create["Role"] == role and create["PackageType"] == "Zip"
    config = lam.get_function(FunctionName="fn")["Configuration"]
    assert info["runtime"] == "python3.13"
    assert (config["Runtime"], config["Handler"], config["Architectures"]) == ("python3.13", "handler.handler",
                                                                              ["x86_64"])
    assert (config["MemorySize"], config["Timeout"]) == (sizing.memory_mb, sizing.timeout_s)
    assert config["Environment"]["Variables"]["TVM_NUM_THREADS"] == str(sizing.threads)
    assert config["CodeSha256"] == lambda_sha(zip_path)
    (v1,) = versions(lam, "fn")
    assert v1["Version"] == "1" and f"edgebundle-fp:{result['fingerprint'][:16]}" in v1["Description"]
    assert lam.get_alias(FunctionName="fn", Name="live")["FunctionVersion"] == "1"
    assert (result["function"], result["alias"], result["version"], result["changed"]) == ("fn", "live", "1", True)
    assert "+ create function fn" in out and "deployed: fn:live -> version 1" in out


def test_zip_through_s3_uploaded_once(tiny_bert_build, role, lam):
    """--s3-bucket: the zip goes to edgebundle/<slug>/<sha256>.zip, the function is created
    from there, and a later deploy of the same zip does not upload it again."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="eb-artifacts")
    zip_path = tiny_bert_build / "lambda.zip"
    key = (f"edgebundle/{image_name(read_manifest(tiny_bert_build).model.name)}/"
           f"{hashlib.sha256(zip_path.read_bytes()).hexdigest()}.zip")

    rec = Recorder()
    run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role, s3_bucket="eb-artifacts")
    assert "PutObject" in rec.ops("s3")
    assert s3.head_object(Bucket="eb-artifacts", Key=key)["ContentLength"] == zip_path.stat().st_size
    (create,) = rec.params("CreateFunction")
    assert create["Code"] == {"S3Bucket": "eb-artifacts", "S3Key": key}
    function = lam.get_function(FunctionName="fn")
    assert function["Code"]["Location"].endswith("/" + key)
    assert function["Configuration"]["CodeSha256"] == lambda_sha(zip_path)

    rec2 = Recorder()
    result, out = run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec2), s3_bucket="eb-artifacts",
                             memory_mb=2048)
    assert f"s3://eb-artifacts/{key} already holds this zip" in out
    assert not {"PutObject", "CreateMultipartUpload", "UploadPart"} & set(rec2.ops("s3"))
    assert "UpdateFunctionCode" not in rec2.ops() and result["version"] == "2"
    assert len(s3.list_objects_v2(Bucket="eb-artifacts")["Contents"]) == 1


def test_update_publishes_new_version_then_nothing(tiny_bert_build, role, lam):
    """A changed configuration updates the function, publishes version 2 and moves the
    alias; the same deploy again publishes nothing."""
    run_deploy(tiny_bert_build, role=role)
    result, out = run_deploy(tiny_bert_build, memory_mb=3008)
    assert (result["version"], result["changed"]) == ("2", True)
    assert "update configuration of fn: MemorySize" in out
    config = lam.get_function_configuration(FunctionName="fn")
    assert config["MemorySize"] == 3008
    assert config["Environment"]["Variables"]["TVM_NUM_THREADS"] == str(vcpus(3008)) == "2"
    assert lam.get_alias(FunctionName="fn", Name="live")["FunctionVersion"] == "2"
    assert lam.get_function_configuration(FunctionName="fn", Qualifier="2")["MemorySize"] == 3008

    rec = Recorder()
    result, out = run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), memory_mb=3008)
    assert (result["version"], result["changed"]) == ("2", False)
    assert "nothing to do" in out
    assert [v["Version"] for v in versions(lam, "fn")] == ["1", "2"]
    assert all(op.startswith(READ_ONLY) for op in rec.ops())


def test_redeploy_of_earlier_bundle_moves_alias_back(tiny_bert_build, role, lam):
    """Deploying the configuration of version 1 again moves the alias back, publishing nothing."""
    run_deploy(tiny_bert_build, role=role)
    run_deploy(tiny_bert_build, memory_mb=3008)
    result, out = run_deploy(tiny_bert_build)
    assert (result["version"], result["changed"]) == ("1", True)
    assert "point alias live at version 1 (was 2)" in out and "publish a version" not in out
    assert lam.get_alias(FunctionName="fn", Name="live")["FunctionVersion"] == "1"
    assert [v["Version"] for v in versions(lam, "fn")] == ["1", "2"]


def test_env_variables_kept(tiny_bert_build, role, lam):
    """--env adds variables; a later deploy without it keeps them (nothing lost)."""
    run_deploy(tiny_bert_build, role=role, environment=(("FOO", "1"),))
    assert lam.get_function_configuration(FunctionName="fn", Qualifier="live")["Environment"]["Variables"][
        "FOO"] == "1"
    run_deploy(tiny_bert_build)
    env = lam.get_function_configuration(FunctionName="fn", Qualifier="live")["Environment"]["Variables"]
    assert env["FOO"] == "1" and "TVM_NUM_THREADS" in env


def test_redeploy_without_env_is_idempotent(tiny_bert_build, role, lam):
    """After a deploy with --env FOO=1, repeating a deploy without --env must reach "nothing to do"."""
    run_deploy(tiny_bert_build, role=role, environment=(("FOO", "1"),))
    run_deploy(tiny_bert_build)
    result, out = run_deploy(tiny_bert_build)
    assert result["changed"] is False and "nothing to do" in out


def test_arm64_bundle(tiny_bert_arm64_build, role, lam):
    """An arm64 build becomes an arm64 function."""
    result, _ = run_deploy(tiny_bert_arm64_build, role=role, function_name="fn-arm")
    config = lam.get_function_configuration(FunctionName="fn-arm", Qualifier="1")
    assert config["Architectures"] == ["arm64"]
    assert config["CodeSha256"] == lambda_sha(tiny_bert_arm64_build / "lambda.zip")
    assert result["version"] == "1"


# -- 5: function URLs -------------------------------------------------------------------------

def test_function_url_iam_then_public(tiny_bert_build, role, lam):
    """--function-url gives the alias an AWS_IAM URL; --public-function-url switches it to
    NONE, grants lambda:InvokeFunctionUrl to everyone and warns about it."""
    result, out = run_deploy(tiny_bert_build, role=role, function_url="AWS_IAM")
    url = lam.get_function_url_config(FunctionName="fn", Qualifier="live")
    assert url["AuthType"] == "AWS_IAM" and result["url"] == url["FunctionUrl"]
    assert "WARNING" not in out
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_policy(FunctionName="fn", Qualifier="live")

    result, out = run_deploy(tiny_bert_build, function_url="NONE")
    assert lam.get_function_url_config(FunctionName="fn", Qualifier="live")["AuthType"] == "NONE"
    statements = json.loads(lam.get_policy(FunctionName="fn", Qualifier="live")["Policy"])["Statement"]
    public = [s for s in statements if s["Action"] == "lambda:InvokeFunctionUrl"]
    assert public and public[0]["Principal"] == "*" and public[0]["FunctionUrlAuthType"] == "NONE"
    # Since October 2025 a public URL also needs InvokeFunction, granted through the URL only.
    assert [s["Sid"] for s in statements if s["Action"] == "lambda:InvokeFunction"] == [
        "edgebundle-public-function-url-invoke"]
    assert re.search(r"WARNING: .*(no|without) authentication", out), out
    assert [v["Version"] for v in versions(lam, "fn")] == ["1"]  # the URL is not part of a version

    run_deploy(tiny_bert_build, function_url="AWS_IAM")  # and back: the public grant is withdrawn
    assert lam.get_function_url_config(FunctionName="fn", Qualifier="live")["AuthType"] == "AWS_IAM"
    try:
        statements = json.loads(lam.get_policy(FunctionName="fn", Qualifier="live")["Policy"])["Statement"]
    except lam.exceptions.ResourceNotFoundException:
        statements = []
    assert not [s for s in statements if s["Action"] in ("lambda:InvokeFunctionUrl", "lambda:InvokeFunction")]


# -- 6: images through ECR ----------------------------------------------------------------------

def test_image_pushed_to_ecr_once(lambda_image, role, lam):
    """An image bundle: the repository is created, the archive pushed once under
    <arch>-<digest>, the function runs that image; a redeploy pushes nothing."""
    tdir, image, manifest = lambda_image
    pusher, rec = RecordingPusher(manifest), Recorder()
    result, _ = run_deploy(tdir / "lambda-image", Clients(region=REGION, factory=rec), role=role, pusher=pusher,
                           function_name="fn-image")

    ecr = boto3.client("ecr", region_name=REGION)
    repo_name = f"edgebundle/{image_name(read_manifest(tdir).model.name)}"
    (repo,) = ecr.describe_repositories(repositoryNames=[repo_name])["repositories"]
    with tarfile.open(tdir / "lambda-image.oci.tar") as tar:
        digest = json.load(tar.extractfile("index.json"))["manifests"][0]["digest"]
    ref = f"{repo['repositoryUri']}:x86_64-{digest.split(':')[1][:12]}"
    assert [c["ref"] for c in pusher.calls] == [ref]
    assert pusher.calls[0]["archive"] == tdir / "lambda-image.oci.tar"
    assert pusher.calls[0]["auth"]["authorizationToken"]
    assert pusher.calls[0]["platform"] == image["platform"] == "linux/amd64"
    assert {"CreateRepository", "GetAuthorizationToken"} <= set(rec.ops("ecr"))
    (create,) = rec.params("CreateFunction")
    assert create["PackageType"] == "Image" and create["Code"] == {"ImageUri": ref}
    assert not {"Runtime", "Handler", "Layers"} & set(create)
    function = lam.get_function(FunctionName="fn-image")
    assert function["Configuration"]["PackageType"] == "Image"
    assert function["Code"]["ImageUri"] == ref
    assert result["version"] == "1"

    result, out = run_deploy(tdir, pusher=pusher, function_name="fn-image", package="image")
    assert len(pusher.calls) == 1 and result["changed"] is False and "nothing to do" in out
    assert [v["Version"] for v in versions(lam, "fn-image")] == ["1"]


def test_pusher_argv_keeps_token_off_command_line(tmp_path):
    """skopeo copies the OCI archive as it is, authenticated through a file, not an argument."""
    archive, authfile = tmp_path / "lambda-image.oci.tar", tmp_path / "auth.json"
    ref = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/edgebundle/bert:x86_64-0123456789ab"
    (argv,) = Pusher().argv("skopeo", "/usr/bin/skopeo", archive, ref, authfile)
    assert argv[0] == "/usr/bin/skopeo" and "--dest-authfile" in argv
    assert argv[argv.index("--dest-authfile") + 1] == str(authfile)
    assert f"oci-archive:{archive}" in argv and f"docker://{ref}" in argv
    # no credential flags: the token only ever goes into the auth file (see the next test)
    assert not any(a.startswith(("--creds", "--dest-creds", "--registry-token", "--dest-registry-token",
                                 "--password", "-p")) for a in argv)


def test_pusher_writes_private_authfile(tmp_path, monkeypatch):
    """Pusher.push runs skopeo with a 0600 auth file holding the ECR token, which never
    appears in argv and is gone afterwards."""
    log, bindir = tmp_path / "log", tmp_path / "bin"
    log.mkdir(), bindir.mkdir()
    skopeo = bindir / "skopeo"
    skopeo.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$FAKE_LOG/argv"\n'
                      'while [ $# -gt 0 ]; do\n  if [ "$1" = --dest-authfile ]; then\n'
                      '    cp "$2" "$FAKE_LOG/auth.json"; stat -c %a "$2" > "$FAKE_LOG/mode"; fi\n  shift\ndone\n')
    skopeo.chmod(skopeo.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    token = base64.b64encode(b"AWS:very-secret-password").decode()
    ref = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/edgebundle/bert:x86_64-0123456789ab"
    Pusher("skopeo").push(tmp_path / "x.oci.tar", ref, {"authorizationToken": token}, None, Progress(quiet=True))
    argv = (log / "argv").read_text()
    assert token not in argv and "very-secret" not in argv
    assert f"oci-archive:{tmp_path / 'x.oci.tar'}" in argv.splitlines()
    auth = json.loads((log / "auth.json").read_text())
    assert auth == {"auths": {ref.split("/")[0]: {"auth": token}}}
    assert (log / "mode").read_text().strip() == "600"
    authfile = argv.splitlines()[argv.splitlines().index("--dest-authfile") + 1]
    assert not Path(authfile).exists()


_FAKE_ENGINE = """#!/bin/sh
# A stand-in for docker / podman: records each call (argv, DOCKER_CONFIG, the config or auth
# file it was given and its mode) under $FAKE_LOG/<n>-<command>, and answers `load`.
n=$(ls "$FAKE_LOG" | wc -l)
d="$FAKE_LOG/$n-$1"
mkdir "$d"
printf '%s\\n' "$@" > "$d/argv"
printf '%s' "${DOCKER_CONFIG-UNSET}" > "$d/docker_config"
if [ -n "$DOCKER_CONFIG" ] && [ -f "$DOCKER_CONFIG/config.json" ]; then
    cp "$DOCKER_CONFIG/config.json" "$d/config.json"; stat -c %a "$DOCKER_CONFIG/config.json" > "$d/mode"
    stat -c %a "$DOCKER_CONFIG" > "$d/dir_mode"
    [ -L "$DOCKER_CONFIG/contexts" ] && readlink "$DOCKER_CONFIG/contexts" > "$d/contexts"
fi
while [ $# -gt 0 ]; do
    if [ "$1" = --authfile ]; then cp "$2" "$d/config.json"; stat -c %a "$2" > "$d/mode"; fi
    shift
done
case "$(cat "$d/argv" | head -n1)" in load) echo "Loaded image: localhost/edgebundle/bert:x86_64-0123456789ab" ;; esac
exit 0
"""


def _fake_engine(tmp_path, monkeypatch, name: str) -> Path:
    log, bindir = tmp_path / "log", tmp_path / "bin"
    log.mkdir(), bindir.mkdir()
    tool = bindir / name
    tool.write_text(_FAKE_ENGINE)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


def _calls(log: Path) -> list[Path]:
    return sorted(log.iterdir(), key=lambda d: int(d.name.split("-", 1)[0]))


def test_docker_push_leaves_no_token_in_the_users_docker_config(tmp_path, monkeypatch):
    """docker pushes with the ECR token in a temporary DOCKER_CONFIG (0700 directory, 0600
    config.json), gone after the push; no `docker login`, so nothing is written to the user's
    ~/.docker/config.json (or a credential helper), and the token is on no command line.
    The user's current context still applies."""
    log = _fake_engine(tmp_path, monkeypatch, "docker")
    home = tmp_path / "home"
    (home / ".docker" / "contexts" / "meta").mkdir(parents=True)
    user_config = home / ".docker" / "config.json"
    user_config.write_text(json.dumps({"currentContext": "remote-box", "auths": {}}))
    before = user_config.read_bytes()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    token = base64.b64encode(b"AWS:very-secret-password").decode()
    ref = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/edgebundle/bert:x86_64-0123456789ab"
    Pusher("docker").push(tmp_path / "x.oci.tar", ref, {"authorizationToken": token}, None, Progress(quiet=True))
    calls = _calls(log)
    assert [c.name.split("-", 1)[1] for c in calls] == ["load", "tag", "push"]  # no login
    for call in calls:
        argv = (call / "argv").read_text()
        assert token not in argv and "very-secret" not in argv and "--password" not in argv
    push = calls[-1]
    config = json.loads((push / "config.json").read_text())
    assert config == {"auths": {ref.split("/")[0]: {"auth": token}}, "currentContext": "remote-box"}
    assert (push / "mode").read_text().strip() == "600" and (push / "dir_mode").read_text().strip() == "700"
    assert (push / "contexts").read_text().strip() == str(home / ".docker" / "contexts")
    temp_config = Path((push / "docker_config").read_text())
    assert temp_config != home / ".docker" and not temp_config.exists()
    assert user_config.read_bytes() == before
    assert sorted(p.name for p in (home / ".docker").iterdir()) == ["config.json", "contexts"]


def test_podman_push_uses_a_private_authfile(tmp_path, monkeypatch):
    """podman pushes with --authfile: a 0600 file in a temporary directory, gone after."""
    log = _fake_engine(tmp_path, monkeypatch, "podman")
    token = base64.b64encode(b"AWS:very-secret-password").decode()
    ref = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/edgebundle/bert:x86_64-0123456789ab"
    Pusher("podman").push(tmp_path / "x.oci.tar", ref, {"authorizationToken": token}, None, Progress(quiet=True))
    calls = _calls(log)
    assert [c.name.split("-", 1)[1] for c in calls] == ["load", "tag", "push"]
    assert all(token not in (c / "argv").read_text() for c in calls)
    argv = (calls[-1] / "argv").read_text().splitlines()
    assert json.loads((calls[-1] / "config.json").read_text()) == {"auths": {ref.split("/")[0]: {"auth": token}}}
    assert (calls[-1] / "mode").read_text().strip() == "600"
    assert not Path(argv[argv.index("--authfile") + 1]).exists()


def test_cli_env_file(tiny_bert_build, role, lam, tmp_path, capsys):
    """`deploy --env-file FILE` sets the file's variables (comments and blank lines skipped,
    the value the rest of the line, = included); --env on the command line wins."""
    from builder.cli import main

    env_file = tmp_path / "secrets.env"
    env_file.write_text("# the API's credentials\n\nAPI_KEY=s3cr3t=with=equals \nSHARED=from-file\n"
                        "  SPACED = kept as written\r\n")
    rc = main(["deploy", str(tiny_bert_build), "--function-name", "fn-env", "--role", role, "--region", REGION,
               "--env-file", str(env_file), "--env", "SHARED=from-cli", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    env = lam.get_function_configuration(FunctionName="fn-env", Qualifier="live")["Environment"]["Variables"]
    assert env["API_KEY"] == "s3cr3t=with=equals " and env["SHARED"] == "from-cli"
    assert env["SPACED"] == " kept as written" and "TVM_NUM_THREADS" in env


@pytest.mark.parametrize("text, line, message", [
    ("GOOD=1\nno equals sign here\n", 2, "expected KEY=VALUE"),
    ("=value\n", 1, "expected KEY=VALUE"),
    ("9LIVES=1\n", 1, "expected KEY=VALUE"),
    ('# ok\nTOKEN="s3cr3t"\n', 2, "the value of TOKEN is in quotes"),
])
def test_cli_env_file_errors_name_the_line_not_the_value(tmp_path, capsys, text, line, message):
    """A malformed --env-file is refused before any AWS call, naming the file and line and
    never echoing the line (it may hold a secret)."""
    from builder.cli import main

    env_file = tmp_path / "bad.env"
    env_file.write_text(text)
    rc = main(["deploy", str(tmp_path), "--function-name", "x", "--env-file", str(env_file), "--dry-run",
               "--region", REGION])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and f"where: {env_file}, line {line}" in err and "Traceback" not in err
    assert "s3cr3t" not in err and "no equals sign" not in err
    rc = main(["deploy", str(tmp_path), "--function-name", "x", "--env-file", str(tmp_path / "missing.env"),
               "--dry-run", "--region", REGION])
    assert rc == 1 and "cannot read the --env-file" in capsys.readouterr().err


# -- 7: runtime layer ----------------------------------------------------------------------------

def test_runtime_layer_published_once_and_shared(tiny_bert_build, role, lam, tmp_path):
    """--runtime-layer: runtime and libtvm go to a layer named by Python and architecture,
    the function's zip carries the model, and a second function reuses the layer version."""
    tdir = copy_build(tiny_bert_build, tmp_path / "x86_64")
    name = layer_name("3.13", "x86_64")
    assert name == "edgebundle-runtime-python3-13-x86_64"

    result, _ = run_deploy(tdir, role=role, function_name="fn-a", runtime_layer=True)
    (layer,) = lam.list_layer_versions(LayerName=name)["LayerVersions"]
    assert result["layer"] == layer["LayerVersionArn"]
    config = lam.get_function_configuration(FunctionName="fn-a", Qualifier="1")
    assert [x["Arn"] for x in config["Layers"]] == [layer["LayerVersionArn"]]
    assert config["CodeSha256"] == lambda_sha(tdir / MODEL_ZIP)
    with zipfile.ZipFile(tdir / MODEL_ZIP) as zf:
        model_names = zf.namelist()
        assert json.loads(zf.read("lambda.json"))["runtime_layer"] == LAYER_ZIP
    assert "handler.py" in model_names and "model.json" in model_names
    assert not any(n.startswith(("runtime/", "libtvm")) for n in model_names)
    with zipfile.ZipFile(tdir / LAYER_ZIP) as zf:
        layer_names = zf.namelist()
    assert "python/runtime/__init__.py" in layer_names and "python/libtvm_runtime.so" in layer_names
    assert not {"python/handler.py", "python/model.json", "python/model.weights", "python/model.so"} & set(layer_names)

    rec = Recorder()
    result, out = run_deploy(tdir, Clients(region=REGION, factory=rec), role=role, function_name="fn-b",
                             runtime_layer=True)
    assert "PublishLayerVersion" not in rec.ops()
    assert "already holds this runtime" in out
    assert len(lam.list_layer_versions(LayerName=name)["LayerVersions"]) == 1
    config_b = lam.get_function_configuration(FunctionName="fn-b")
    assert [x["Arn"] for x in config_b["Layers"]] == [layer["LayerVersionArn"]]


# -- 8: dry run ----------------------------------------------------------------------------------

def test_dry_run_changes_nothing(tiny_bert_build, role, lam, tmp_path):
    """--dry-run on a fresh account only reads (Get/List/Head/Describe), creates nothing,
    and returns the plan's create actions."""
    tdir = copy_build(tiny_bert_build, tmp_path / "x86_64")
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="eb-artifacts")
    ops: list[str] = []

    def factory(service):
        client = boto3.client(service, region_name=REGION)
        client.meta.events.register("before-call", lambda model, **kw: ops.append(model.name))
        return client

    result, out = run_deploy(tdir, Clients(region=REGION, factory=factory), role=role, s3_bucket="eb-artifacts",
                             runtime_layer=True, function_url="NONE", dry_run=True)
    assert result["dry_run"] is True and "dry run: nothing was changed" in out
    plan = result["plan"]
    for start in ("publish layer", "upload lambda-model.zip", "create function fn", "publish a version of fn",
                  "create alias live", "create a function URL", "allow anyone"):
        assert any(a.startswith(start) for a in plan), (start, plan)
    assert lam.list_functions()["Functions"] == []
    assert lam.list_layers()["Layers"] == []
    assert s3.list_objects_v2(Bucket="eb-artifacts").get("KeyCount") == 0
    assert {"GetFunction", "GetRole", "HeadObject", "ListLayerVersions"} <= set(ops)
    assert all(op.startswith(READ_ONLY) for op in ops), ops


# -- 9: refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("info", [{"deployable": False, "not_deployable_reason": "built for local tests"},
                                  {"python": "3.11", "runtime": "python3.11"}], ids=["deployable-false", "py311"])
def test_refuses_undeployable_zip_before_any_aws_call(tiny_bert_build, tmp_path, info):
    """A zip whose lambda.json says it cannot run on Lambda is refused without touching AWS."""
    tdir = small_target(tiny_bert_build, tmp_path / "x86_64", lambda_info=info)
    calls: list = []
    with pytest.raises(DeployError, match="not deployable") as e:
        run_deploy(tdir, no_aws(calls), role="r")
    assert calls == [] and "error:" in str(e.value)


def test_refuses_gpu_target_before_any_aws_call(tiny_bert_build, tmp_path):
    """A cuda target dir without a Lambda bundle is refused: Lambda has no GPUs."""
    tdir = small_target(tiny_bert_build, tmp_path / "cuda", target={"device": "cuda", "name": "cuda"})
    calls: list = []
    with pytest.raises(DeployError, match="GPU") as e:
        run_deploy(tdir, no_aws(calls), role="r")
    assert calls == [] and "cuda" in str(e.value)


def test_refuses_snapstart_for_image_before_any_aws_call(lambda_image):
    """--snapstart with an image bundle is refused (SnapStart takes zips only)."""
    calls: list = []
    with pytest.raises(DeployError, match="SnapStart does not support container images"):
        run_deploy(lambda_image[0], no_aws(calls), role="r", snapstart=True, package="image")
    assert calls == []


def test_refuses_ambiguous_target_dir_before_any_aws_call(lambda_image):
    """A target dir holding both a zip and an image needs --package."""
    calls: list = []
    with pytest.raises(DeployError, match="both a Lambda zip and a Lambda image") as e:
        run_deploy(lambda_image[0], no_aws(calls), role="r")
    assert calls == [] and "--package" in e.value.hint


def test_refuses_runtime_layer_for_image_before_any_aws_call(lambda_image):
    """--runtime-layer applies to zips only."""
    calls: list = []
    with pytest.raises(DeployError, match="--runtime-layer applies to zips"):
        run_deploy(lambda_image[0], no_aws(calls), role="r", runtime_layer=True, package="image")
    assert calls == []


@pytest.mark.parametrize("options, message", [
    ({"function_name": "bad name!"}, "function name"),
    ({"alias": "123"}, "alias"),
    ({"memory_mb": 64}, "--memory 64"),
    ({"timeout_s": 901}, "--timeout 901"),
    ({"environment": (("AWS_REGION", "x"),)}, "reserved"),
], ids=["name", "alias", "memory", "timeout", "env"])
def test_refuses_bad_options_before_any_aws_call(tiny_bert_build, options, message):
    """Names and sizes Lambda would refuse are refused before any AWS call."""
    calls: list = []
    with pytest.raises(DeployError, match=message):
        run_deploy(tiny_bert_build, no_aws(calls), role="r", **options)
    assert calls == []


def test_first_deploy_needs_role(tiny_bert_build, role, lam):
    """Creating a function without --role is refused, naming --role; nothing is created."""
    with pytest.raises(DeployError, match="--role"):
        run_deploy(tiny_bert_build)
    assert lam.list_functions()["Functions"] == []


def test_missing_role_refused(tiny_bert_build, role, lam):
    """A role ARN IAM does not know is refused before anything is created."""
    with pytest.raises(DeployError, match="does not exist"):
        run_deploy(tiny_bert_build, role=f"arn:aws:iam::{ACCOUNT}:role/no-such-role")
    assert lam.list_functions()["Functions"] == []


def test_big_zip_needs_s3_bucket(tiny_bert_build, role, lam, monkeypatch):
    """A zip above Lambda's direct-upload limit without --s3-bucket is refused, naming it."""
    monkeypatch.setattr(deploy_plan, "DIRECT_UPLOAD_LIMIT", 1024)
    with pytest.raises(DeployError) as e:
        run_deploy(tiny_bert_build, role=role)
    assert "--s3-bucket" in str(e.value) and "from S3" in e.value.what
    assert lam.list_functions()["Functions"] == []


# -- 10: AWS errors -----------------------------------------------------------------------------

def test_access_denied_is_one_error_line(tiny_bert_build, role, lam):
    """AccessDeniedException on CreateFunction: one `error:` line naming the step and the
    code, and a hint on what to grant; no function, no alias."""
    rec = Recorder().stub("before-call.lambda.CreateFunction",
                          FailTimes(99, "AccessDeniedException", "User is not authorized to perform: "
                                                                 "lambda:CreateFunction"))
    with pytest.raises(DeployError) as e:
        run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role)
    text = e.value.render()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "create function fn" in errors[0] and "AccessDeniedException" in errors[0]
    assert "lambda:CreateFunction" in errors[0]
    assert "what to do:" in text and "grant" in text
    assert lam.list_functions()["Functions"] == []


def test_publish_failure_leaves_alias_on_previous_version(tiny_bert_build, role, lam):
    """CodeStorageExceededException on PublishVersion fails the deploy with its hint, and
    the alias stays on version 1; the next deploy recovers."""
    run_deploy(tiny_bert_build, role=role)
    rec = Recorder().stub("before-call.lambda.PublishVersion",
                          FailTimes(99, "CodeStorageExceededException", "Code storage limit exceeded."))
    with pytest.raises(DeployError) as e:
        run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), memory_mb=2048)
    assert "CodeStorageExceededException" in e.value.what and "delete old versions" in e.value.hint
    assert "UpdateAlias" not in rec.ops()
    assert lam.get_alias(FunctionName="fn", Name="live")["FunctionVersion"] == "1"
    assert [v["Version"] for v in versions(lam, "fn")] == ["1"]

    result, _ = run_deploy(tiny_bert_build, memory_mb=2048)
    assert result["version"] == "2"
    assert lam.get_alias(FunctionName="fn", Name="live")["FunctionVersion"] == "2"


def test_update_in_progress_is_retried(tiny_bert_build, role, lam, monkeypatch):
    """ResourceConflictException "update is in progress" is retried until it passes."""
    monkeypatch.setattr(deploy_aws, "CONFLICT_RETRY_S", (0, 0, 0))
    run_deploy(tiny_bert_build, role=role)
    conflict = FailTimes(2, "ResourceConflictException",
                         "An update is in progress for resource: arn:aws:lambda:us-east-1:123456789012:function:fn")
    rec = Recorder().stub("before-call.lambda.UpdateFunctionConfiguration", conflict)
    result, out = run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), memory_mb=2048)
    assert conflict.hits == 3 and result["version"] == "2"
    assert out.count("retrying in 0 s") == 2
    assert lam.get_function_configuration(FunctionName="fn", Qualifier="live")["MemorySize"] == 2048


def test_update_in_progress_gives_up(tiny_bert_build, role, lam, monkeypatch):
    """When the conflict outlasts the retries, the deploy fails with the conflict's hint."""
    monkeypatch.setattr(deploy_aws, "CONFLICT_RETRY_S", (0, 0))
    run_deploy(tiny_bert_build, role=role)
    conflict = FailTimes(99, "ResourceConflictException", "An update is in progress for resource: fn")
    rec = Recorder().stub("before-call.lambda.UpdateFunctionConfiguration", conflict)
    with pytest.raises(DeployError, match="ResourceConflictException") as e:
        run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), memory_mb=2048)
    assert conflict.hits == 3 and "in progress" in e.value.hint
    assert lam.get_alias(FunctionName="fn", Name="live")["FunctionVersion"] == "1"


def test_new_role_not_yet_assumable_is_retried(tiny_bert_build, role, lam, monkeypatch):
    """"The role ... cannot be assumed by Lambda" (IAM propagation) on CreateFunction is retried."""
    monkeypatch.setattr(deploy_aws, "ROLE_PROPAGATION_S", (0, 0, 0, 0))
    not_ready = FailTimes(2, "InvalidParameterValueException",
                          "The role defined for the function cannot be assumed by Lambda.")
    rec = Recorder().stub("before-call.lambda.CreateFunction", not_ready)
    result, _ = run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role)
    assert not_ready.hits == 3 and result["version"] == "1"
    assert lam.get_function_configuration(FunctionName="fn")["Role"] == role


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs):
        yield self.body


def test_throttling_is_retried_by_botocore(tiny_bert_build, role, lam, monkeypatch):
    """HTTP 429 TooManyRequestsException (on the wire, before-send) is retried by botocore's
    standard retry mode (the product's client config) and the deploy succeeds."""
    from moto.core.botocore_stubber import BotocoreStubber

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0)
    # botocore runs every before-send handler and takes the first answer, so moto's would
    # still create the function behind a throttled attempt: it skips the requests we answer.
    moto_process = BotocoreStubber.process_request
    monkeypatch.setattr(BotocoreStubber, "process_request", lambda self, request: None if getattr(
        request, "answered_by_test", False) else moto_process(self, request))
    hits = []

    def throttle(request, **kwargs):
        hits.append(request.url)
        if len(hits) <= 2:
            request.answered_by_test = True
            return AWSResponse(request.url, 429, {"x-amzn-ErrorType": "TooManyRequestsException",
                                                  "Content-Type": "application/json"},
                               _Raw(b'{"message": "Rate exceeded", "Reason": "CallerRateLimitExceeded"}'))
        return None

    config = Config(retries={"mode": "standard", "max_attempts": deploy_aws.MAX_ATTEMPTS})
    rec = Recorder(config).stub("before-send.lambda.CreateFunction", throttle)
    result, _ = run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role)
    assert len(hits) == 3 and rec.ops().count("CreateFunction") == 1
    assert result["version"] == "1" and lam.get_function(FunctionName="fn")


def test_s3_upload_failure_is_one_error_line(tiny_bert_build, role, lam):
    """A refused S3 upload fails the deploy with one error line naming the upload and the
    AWS error; nothing is created."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="eb-artifacts")
    rec = Recorder().stub("before-call.s3.PutObject", FailTimes(99, "AccessDenied", "Access Denied"))
    with pytest.raises(DeployError) as e:
        run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role, s3_bucket="eb-artifacts")
    errors = [line for line in e.value.render().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: upload lambda.zip") and "AccessDenied" in errors[0]
    assert lam.list_functions()["Functions"] == []


def test_s3_upload_failure_keeps_aws_hint(tiny_bert_build, role):
    """The upload's AWS error code picks the hint, as for every other call."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="eb-artifacts")
    rec = Recorder().stub("before-call.s3.PutObject", FailTimes(99, "AccessDenied", "Access Denied"))
    with pytest.raises(DeployError) as e:
        run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role, s3_bucket="eb-artifacts")
    assert "grant the deploying identity" in e.value.hint


def test_no_credentials_translated():
    """Missing credentials become one error line with what to configure."""
    e = deploy_aws.translate(botocore.exceptions.NoCredentialsError(), "x")
    assert isinstance(e, DeployError)
    assert e.render().splitlines()[0] == "error: x: no AWS credentials found"
    assert "aws configure" in e.hint and "AWS_PROFILE" in e.hint


# -- 11: invoke --function -------------------------------------------------------------------

def test_invoke_deployed_function(tiny_bert_build, role_no_docker):
    """invoke --function calls NAME:ALIAS once per event and prints one JSON line each."""
    run_deploy(tiny_bert_build, role=role_no_docker)
    rec = Recorder()
    out, err = io.StringIO(), io.StringIO()
    events = [b'{"inputs": "hi"}', b'{"inputs": "again"}']
    assert invoke_function("fn:live", events, Clients(region=REGION, factory=rec), out=out, err=err) == 0
    lines = out.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [json.loads(e) for e in events]  # moto echoes the event
    calls = rec.params("Invoke")
    assert [c["Payload"] for c in calls] == events
    assert all(c["FunctionName"] == "fn" and c["Qualifier"] == "live" and c["LogType"] == "Tail" for c in calls)
    assert err.getvalue() == ""


def test_invoke_function_error(role_no_docker):
    """A function error: exit status 1, the error and the decoded log tail on stderr."""
    body = json.dumps({"errorType": "BadInput", "errorMessage": "boom"}).encode()
    log = "START RequestId: 1\nTraceback: BadInput: boom in handler\nEND RequestId: 1\n"

    def failed(**kwargs):
        return (AWSResponse("https://stub.invalid", 200, {}, None),
                {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "1",
                 "LogResult": base64.b64encode(log.encode()).decode(),
                 "Payload": StreamingBody(io.BytesIO(body), len(body)), "ResponseMetadata": {"HTTPStatusCode": 200}})

    rec = Recorder().stub("before-call.lambda.Invoke", failed)
    out, err = io.StringIO(), io.StringIO()
    assert invoke_function("fn:live", [b'{"inputs": 1}'], Clients(region=REGION, factory=rec), out=out,
                           err=err) == 1
    assert json.loads(out.getvalue()) == {"errorType": "BadInput", "errorMessage": "boom"}
    text = err.getvalue()
    assert "failed (Unhandled): BadInput: boom" in text
    assert "Traceback: BadInput: boom in handler" in text and "START RequestId: 1" in text


# -- 12: the CLI -----------------------------------------------------------------------------

def test_cli_deploy_without_role_is_one_error(tiny_bert_build, role, capsys):
    """`edgebundle deploy --dry-run` on a fresh account without --role: exit 1, the --role
    error on stderr, no traceback."""
    from builder.cli import main

    rc = main(["deploy", str(tiny_bert_build), "--function-name", "x", "--dry-run", "--region", REGION])
    captured = capsys.readouterr()
    assert rc == 1
    assert "error: function x does not exist yet" in captured.err and "--role" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_cli_invoke_function(tiny_bert_build, role_no_docker, tmp_path, capsys):
    """`edgebundle invoke --function fn:live --event FILE` prints one JSON line and exits 0."""
    from builder.cli import main

    run_deploy(tiny_bert_build, role=role_no_docker)
    event = tmp_path / "event.json"
    event.write_text('{"inputs": "hi"}')
    rc = main(["invoke", "--function", "fn:live", "--event", str(event), "--region", REGION, "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.splitlines() == ['{"inputs": "hi"}']


def test_cli_dry_run_json(tiny_bert_build, role, capsys):
    """`deploy --dry-run --json` of a new function prints the result as JSON and exits 0."""
    from builder.cli import main

    rc = main(["deploy", str(tiny_bert_build), "--function-name", "x", "--role", role, "--dry-run", "--json",
               "--region", REGION, "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["dry_run"] is True


# -- from review: sizing numbers, failed versions, package types, S3 without ListBucket ---------

class _Manifest:
    """What size_function reads of a manifest: weights and library sizes."""

    def __init__(self, weights_mib: int, code_mib: int = 2):
        from runtime.manifest import Library, WeightsFile

        self.weights = WeightsFile("model.weights", 1, weights_mib * 2 ** 20)
        self.libraries = (Library("model.so", None),)
        self.files = {"model.so": {"size": code_mib * 2 ** 20}}


@pytest.mark.parametrize("weights, latency, memory, timeout, threads", [
    (86, None, 1792, 60, 1),  # MiniLM: one whole vCPU is the floor; untimed: 60 s
    (414, {"full_batch_ms": 1551, "threads": 2}, 1792, 30, 1),  # 3 x 3.1 s + 10 s < the 30 s floor
    (3000, {"full_batch_ms": 20000, "threads": 2}, 3264, 70, 2),  # 3002 + 256 -> 3264; 3 x 20 s + 10 s
    (1000, {"full_batch_ms": 400000, "threads": 4}, 1792, 900, 1),  # capped at Lambda's 900 s
])
def test_sizing_rule_numbers(weights, latency, memory, timeout, threads):
    """The documented rule, as numbers: memory = max(1769, weights + code + 256) rounded up
    to 64; threads = memory / 1769 rounded; timeout = 3 x scaled full batch + 10, 30..900."""
    sizing = size_function(_Manifest(weights), latency)
    assert (sizing.memory_mb, sizing.timeout_s, sizing.threads) == (memory, timeout, threads)
    assert size_function(_Manifest(weights), latency, memory_mb=10240).threads == 6


def test_model_too_big_for_lambda_memory_refused():
    with pytest.raises(DeployError, match="more than Lambda's 10240 MB"):
        size_function(_Manifest(10200), None)


def test_failed_version_is_not_reused(tiny_bert_build, role, lam):
    """A version with this fingerprint whose state is Failed (a SnapStart snapshot that
    failed) is not pointed at: the deploy publishes again."""
    run_deploy(tiny_bert_build, role=role)

    def failed(parsed, **kwargs):
        for v in parsed.get("Versions", []):
            if v["Version"] == "1":
                v["State"] = "Failed"

    rec = Recorder().stub("after-call.lambda.ListVersionsByFunction", failed)
    _, out = run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec))
    assert "already holds this bundle" not in out
    assert "PublishVersion" in rec.ops("lambda")


def test_package_type_change_refused(tiny_bert_build, lambda_image, role, lam):
    """A zip onto an image function is refused in the plan, before anything is pushed."""
    tdir, _, manifest = lambda_image
    run_deploy(tdir / "lambda-image", role=role, pusher=RecordingPusher(manifest), function_name="fn-kind")
    rec = Recorder()
    with pytest.raises(DeployError, match="cannot change a function's package type"):
        run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), function_name="fn-kind")
    assert all(op.startswith(("Get", "List", "Head", "Describe")) for op in rec.ops())


def test_split_model_zip_refused_alone(tiny_bert_build, tmp_path):
    """lambda-model.zip (the model half of --runtime-layer) has no runtime: refused."""
    from builder.deploy.layer import split_zip

    work = copy_build(tiny_bert_build, tmp_path / "x86_64")
    split = split_zip(work / "lambda.zip", read_manifest(work))
    calls = []
    with pytest.raises(DeployError, match="model half of a --runtime-layer split"):
        run_deploy(split.model, no_aws(calls), role="arn:aws:iam::123456789012:role/r")
    assert calls == []


def test_s3_head_forbidden_means_upload(tiny_bert_build, role, lam):
    """Without s3:ListBucket S3 answers HEAD of a missing key with 403: the zip is uploaded."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="edge-forbidden")
    rec = Recorder().stub("before-call.s3.HeadObject", lambda **kw: error_response("403", "Forbidden", 403))
    run_deploy(tiny_bert_build, Clients(region=REGION, factory=rec), role=role, s3_bucket="edge-forbidden")
    assert "PutObject" in rec.ops("s3") or "CreateMultipartUpload" in rec.ops("s3")
    assert versions(lam, "fn")[0]["Version"] == "1"


def test_invoke_client_never_retries():
    """A retried Invoke would run the model twice: one attempt, a read timeout above 900 s."""
    with mock_aws():
        client = Clients(region=REGION).invoke_client()
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert client.meta.config.read_timeout > 900
