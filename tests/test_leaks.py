"""Nothing of the build machine in a bundle: no absolute paths, user or host names,
environment values or credentials in any file of any format, and the same model built from
two directories (two homes, two temporary directories, two host names) gives byte-identical
bundles. Also: what the manifest records instead (the model's source and digest, the
tuning database's name and sha256), and secrets kept off command lines (`invoke` of an
image passes its environment in a private file)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest

from builder.errors import EdgebundleError, ModelSourceError
from builder.model import source as msource

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("lambda", "lambda-image", "serve-image", "edge")
# What a credential looks like, whoever's it is: an AWS access key id, the name of the AWS
# secret key setting, a PEM private key.
CREDENTIALS = [re.compile(rb"AKIA[0-9A-Z]{16}"), re.compile(rb"(?i)aws_secret_access_key"),
               re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")]


# ------------------------------------------------------------------ what the manifest records

def _sha256sum_of_sha256sums(folder: Path, files: list[str]) -> str:
    """`cd folder && sha256sum FILES | sha256sum`, by coreutils when installed."""
    if shutil.which("sha256sum"):
        listing = subprocess.run(["sha256sum", *files], cwd=folder, capture_output=True, check=True).stdout
    else:
        listing = "".join(f"{hashlib.sha256((folder / f).read_bytes()).hexdigest()}  {f}\n" for f in files).encode()
    return hashlib.sha256(listing).hexdigest()


def test_local_source_is_the_directory_name_and_a_digest(tmp_path):
    model = tmp_path / "EBLEAKMARKER-x" / "my-model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "pytorch_model.bin").write_bytes(b"not the one transformers loads")
    (model / "README.md").write_text("does not define the model")
    rec = msource.model_record(model)
    assert rec["source"] == "local:my-model"
    assert rec["digest"] == {"files": ["config.json", "model.safetensors"],
                             "sha256": _sha256sum_of_sha256sums(model, ["config.json", "model.safetensors"])}
    assert "EBLEAKMARKER" not in json.dumps(rec) and msource.default_name(str(model), model) == "my-model"
    (model / "README.md").write_text("changed")
    assert msource.model_record(model) == rec  # only config and weights count
    (model / "model.safetensors").write_bytes(b"other weights")
    assert msource.model_record(model)["digest"]["sha256"] != rec["digest"]["sha256"]


def test_sharded_weights_count_every_shard(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                        "c": "model-00001-of-00002.safetensors"}}))
    for n in (1, 2):
        (tmp_path / f"model-0000{n}-of-00002.safetensors").write_bytes(bytes([n]))
    files = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors"]
    assert msource.model_digest(tmp_path) == {"files": files, "sha256": _sha256sum_of_sha256sums(tmp_path, files)}
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="cannot read model-00002-of-00002.safetensors"):
        msource.model_digest(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(ModelSourceError, match="names a shard that is not a file beside it"):
        msource.model_digest(tmp_path)


def _hub_snapshot(hub: Path, repo: str = "acme/tiny", commit: str = "0123abcd" * 5) -> Path:
    base = hub / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"w")
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return snap


def test_hub_source_is_the_hub_id_and_commit(tmp_path, monkeypatch):
    """From the HF cache (by hub id, or by the snapshot's path): "hub:ORG/NAME@COMMIT", found
    again in this machine's cache by `locate`; the cache's path is nowhere."""
    hub = tmp_path / "EBLEAKMARKER-cache" / "hub"
    snap = _hub_snapshot(hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model in ("acme/tiny", str(snap)):
        resolved = msource.resolve_model(model)
        rec = msource.model_record(resolved)
        assert rec["source"] == f"hub:acme/tiny@{'0123abcd' * 5}" and "EBLEAKMARKER" not in json.dumps(rec)
        assert msource.default_name(model, resolved) == "acme/tiny"
    assert msource.locate(rec["source"]) == snap
    assert msource.locate("hub:acme/tiny@" + "f" * 40) is None and msource.locate("local:tiny") is None


def _manifest(source: str, digest: dict | None):
    return types.SimpleNamespace(model=types.SimpleNamespace(source=source, digest=digest))


def test_bench_finds_the_model_by_digest_not_by_path(tmp_path, monkeypatch):
    """bench, given a build's OUT, needs the PyTorch model: a hub source is found in the
    cache, a local one is asked for (--model-dir) and must be the one that was compiled."""
    from builder.tools.bench import built_from

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w")
    rec = msource.model_record(model)
    m = _manifest(rec["source"], rec["digest"])
    with pytest.raises(EdgebundleError, match="--model-dir") as exc:
        built_from(m, None, tmp_path / "out" / "x86_64")
    assert "local:model" in str(exc.value)
    assert built_from(m, model, tmp_path) == model.resolve()
    other = tmp_path / "other"
    shutil.copytree(model, other)
    (other / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(EdgebundleError, match="is not the model this build compiled"):
        built_from(m, other, tmp_path)
    hub = tmp_path / "hub"
    snap = _hub_snapshot(hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    hub_rec = msource.model_record(snap)
    assert built_from(_manifest(hub_rec["source"], hub_rec["digest"]), None, tmp_path) == snap
    # schema 2 recorded the build machine's path: still used where it exists
    assert built_from(_manifest(str(model), None), None, tmp_path) == model


# ------------------------------------------------------------------ secrets off command lines

_FAKE_PODMAN = """#!/bin/sh
case "$1" in
  image) echo '{"Architecture": "amd64", "Config": {"Labels": {"io.edgebundle.format": "lambda-image"}}}' ;;
  run) printf '%s\\n' "$@" > "$FAKE_LOG/argv"
       while [ $# -gt 0 ]; do
         if [ "$1" = --env-file ]; then cp "$2" "$FAKE_LOG/env"; stat -c %a "$2" > "$FAKE_LOG/mode"
                                        echo "$2" > "$FAKE_LOG/path"; fi
         shift
       done
       echo "stand-in: no runtime here"; exit 3 ;;
esac
exit 0
"""


def test_invoke_image_passes_the_environment_in_a_private_file(tmp_path, monkeypatch):
    """`invoke` of a Lambda image gives the container its environment with --env-file (a
    0600 file in a private directory, removed after), not -e KEY=VALUE, which every user of
    the machine can read in ps."""
    from builder.container.engine import Engine
    from builder.errors import InvokeError
    from builder.local.lambda_runtime import _run_image

    log = tmp_path / "log"
    log.mkdir()
    podman = tmp_path / "podman"
    podman.write_text(_FAKE_PODMAN)
    podman.chmod(0o755)
    monkeypatch.setenv("FAKE_LOG", str(log))
    with pytest.raises(InvokeError, match="exited with code 3 during init"):
        _run_image(Engine("podman", str(podman)), "localhost/edgebundle/m:x86_64-0123456789ab", "m", [b"{}"],
                   io.StringIO(), io.StringIO(), 30)
    argv = (log / "argv").read_text().splitlines()
    assert "-e" not in argv and "--env" not in argv and not any("AWS_LAMBDA_RUNTIME_API" in a for a in argv)
    env = dict(line.split("=", 1) for line in (log / "env").read_text().splitlines())
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:") and env["AWS_LAMBDA_FUNCTION_NAME"]
    assert (log / "mode").read_text().strip() == "600"
    env_path = Path((log / "path").read_text().strip())
    assert not env_path.exists() and not env_path.parent.exists()


# ------------------------------------------------------------------ whole builds, scanned

def _contents(name: str, data: bytes):
    """(name, bytes) of a file and of everything inside it: zips (wheels too), gzip, tar."""
    yield name, data
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                yield f"{name}!{info.filename}", info.filename.encode()
                yield from _contents(f"{name}!{info.filename}", zf.read(info))
    elif data[:2] == b"\x1f\x8b":
        yield from _contents(f"{name}!gunzip", gzip.decompress(data))
    elif len(data) > 262 and data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                yield f"{name}!{member.name}", member.name.encode() + member.linkname.encode()
                if member.isfile():
                    yield from _contents(f"{name}!{member.name}", tar.extractfile(member).read())


def _scan(out: Path, needles: list[bytes], patterns: list[re.Pattern]) -> list[str]:
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if any(n in rel.encode() for n in needles):
            found.append(f"{rel}: in the file's name")
        if not path.is_file():
            continue
        for name, data in _contents(rel, path.read_bytes()):
            for needle in needles:
                for form in (needle, needle.decode().encode("utf-16-le")):
                    if form in data:
                        i = data.index(form)
                        found.append(f"{name}: {needle!r} in ...{data[max(0, i - 60):i + len(form) + 20]!r}")
            for pattern in patterns:
                m = pattern.search(data)
                if m:
                    found.append(f"{name}: {pattern.pattern!r} in ...{data[max(0, m.start() - 60):m.end() + 20]!r}")
    return found


def _uts_namespace() -> list[str] | None:
    """A command prefix that runs the build with a host name of our choosing (a new UTS
    namespace: root, or an unprivileged user namespace), or None where neither is allowed."""
    if not shutil.which("unshare"):
        return None
    for flags in (["--uts"], ["--user", "--map-root-user", "--uts"]):
        probe = subprocess.run(["unshare", *flags, "--fork", "sh", "-c", "hostname eb-probe && hostname"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "eb-probe":
            return ["unshare", *flags, "--fork"]
    return None


def _tuning_db(path: Path) -> None:
    """What `edgebundle tune` writes, with the default parameters (tuning itself is slow)."""
    import dataclasses

    from builder.compiler.schedules.cpu import CpuParams
    from builder.compiler.targets import TARGETS

    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": 1, "target": TARGETS["x86_64"].tvm_target_json(),
                                "params": dataclasses.asdict(CpuParams())}, indent=2))


def _marked_build(model_src: Path, base: Path, marker: str, host: str, uts: list[str] | None) -> Path:
    """Build every format from a copy of the model under a path holding `marker`, with
    HOME, TMPDIR, the working directory, the cache's path, USER and a few variables holding it
    too, fake AWS credentials in the environment, and the host name `host`."""
    from builder.cache import cache_dir

    root = base / marker
    model = root / "work" / "model"  # the same directory name in every build: it is recorded
    shutil.copytree(model_src, model)
    for d in ("home", "tmp"):
        (root / d).mkdir()
    (root / "cache").symlink_to(cache_dir(), target_is_directory=True)  # wheels already fetched
    _tuning_db(root / "db" / "tuning.json")
    env = {**os.environ, "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"), "USER": marker,
           "LOGNAME": marker, "EDGEBUNDLE_CACHE": str(root / "cache"), "HF_HOME": str(root / "home" / "hf"),
           "EB_LEAK_PROBE": f"{marker}-env-value", "PYTHONPATH": str(ROOT),
           "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
           "AWS_SECRET_ACCESS_KEY": f"{marker}-aws-secret", "AWS_SESSION_TOKEN": f"{marker}-aws-session"}
    # Every format for x86_64; then the other code paths of compiled libraries, cross-compiled
    # (arm64) and with a fatbin from nvcc (cuda), in the formats that take them.
    builds = [("out", ["--tuning-db", str(root / "db" / "tuning.json"),
                       *(a for f in FORMATS for a in ("--format", f))]),
              ("out-more", ["--target", "arm64", "--seq-buckets", "32", "--format", "edge"]
               + (["--target", "cuda", "--cuda-arch", "sm_80"] if shutil.which("nvcc") else []))]
    for out, options in builds:
        cmd = [sys.executable, "-m", "builder.cli", "build", str(model), "--out", str(root / out), "--seq-len", "32",
               "--quiet", *options]
        if uts:
            cmd = [*uts, "sh", "-c", 'hostname "$0" && exec "$@"', host, *cmd]
        proc = subprocess.run(cmd, cwd=root / "work", env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def marked_builds(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT built twice, each time from its own marked directory: [(root, marker,
    host)]; root/out has x86_64 in every format, root/out-more arm64 (and cuda) in edge."""
    uts = _uts_namespace()
    builds = []
    for _ in range(2):
        marker = f"EBLEAKMARKER-{secrets.token_hex(6)}"
        host = f"ebleakhost-{secrets.token_hex(6)}" if uts else socket.gethostname()
        builds.append((_marked_build(tiny_bert_dir, tmp_path_factory.mktemp("leak"), marker, host, uts), marker,
                       host))
    return builds


@pytest.mark.slow
def test_no_path_user_host_env_or_credential_in_any_bundle(marked_builds):
    """Every file of OUT (build.json, manifests, lambda.zip, both image contexts and their
    YAML, the SAM template, edge.tar.gz; arm64 and cuda edge tarballs too), and every file
    inside those archives and the wheels they carry, text or binary (the compiled libraries
    too: native, cross-compiled, with an nvcc fatbin), holds neither the marker (the
    model's, HOME's, TMPDIR's, the cache's, the working directory's path, USER, an
    environment value), nor the host name, nor anything that looks like a credential."""
    for root, marker, host in marked_builds:
        needles = [marker.encode(), b"EBLEAKMARKER"]
        # A short host name ("vm") is in any binary by chance; ours is unique when the build
        # ran in its own UTS namespace.
        if len(host) >= 8:
            needles.append(host.encode())
        out = root / "out"
        assert sorted(p.name for p in (out / "x86_64").iterdir()) == sorted([
            "edge.tar.gz", "lambda-image", "lambda.zip", "model-seq16.avx512.so", "model-seq16.so", "model.avx512.so",
            "model.json", "model.so",
            "model.weights", "serve-image", "serve-image.k8s.yaml", "serve-image.kserve.yaml", "template.yaml",
            "timing.json", "tokenizer.json"])
        assert (root / "out-more" / "arm64" / "edge.tar.gz").is_file()
        assert _scan(out, needles, CREDENTIALS) + _scan(root / "out-more", needles, CREDENTIALS) == []


@pytest.mark.slow
def test_what_the_manifest_records_instead(marked_builds, tiny_bert_dir, tmp_path):
    """model.source and the digest (what `sha256sum config.json model.safetensors | sha256sum`
    gives in the model directory), the tuning database by name and sha256; the same in
    build.json and shown by inspect. A schema 2 manifest (the build's path as source) is
    still read."""
    from builder.tools.describe import describe
    from runtime import manifest

    out = marked_builds[0][0] / "out"
    m = json.loads((out / "x86_64" / "model.json").read_text())
    digest = {"files": ["config.json", "model.safetensors"],
              "sha256": _sha256sum_of_sha256sums(tiny_bert_dir, ["config.json", "model.safetensors"])}
    assert m["schema"] == manifest.SCHEMA == 4
    assert m["model"]["source"] == "local:model" and m["model"]["digest"] == digest
    db = (out.parent / "db" / "tuning.json").read_bytes()
    assert m["variants"][0]["schedule"]["tuning_db"] == {"file": "tuning.json",
                                                         "sha256": hashlib.sha256(db).hexdigest()}
    record = json.loads((out / "build.json").read_text())
    assert record["model"]["source"] == "local:model" and record["model"]["digest"] == digest
    assert "built_at" not in record
    text = describe(out / "x86_64")
    assert f"source     local:model  (config.json, model.safetensors: sha256 {digest['sha256'][:16]})" in text
    assert "schedule from tuning database tuning.json" in text

    old = tmp_path / "old"
    shutil.copytree(out / "x86_64", old, ignore=shutil.ignore_patterns("*-image", "*.gz", "*.zip"))
    data = json.loads((old / "model.json").read_text())
    data["schema"] = 2  # one set of libraries, not variants
    baseline = data.pop("variants")[0]
    data.update(libraries=baseline["libraries"], schedule=baseline["schedule"], validation=baseline["validation"])
    data["model"]["source"] = "/home/someone/models/model"
    del data["model"]["digest"]
    data["schedule"]["tuning_db"] = "/home/someone/db.json"
    (old / "model.json").write_text(json.dumps(data))
    read = manifest.read(old)
    assert read.schema == 2 and read.model.source == "/home/someone/models/model" and read.model.digest is None
    assert "source     /home/someone/models/model\n" in describe(old)


def _digests(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), os.access(p, os.X_OK))
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_directories_give_byte_identical_bundles(marked_builds):
    """Two builds from different directories, homes, temporary directories, host names and
    users: every file of OUT/<target> has the same sha256 (the zip, the tarball, each file of
    both contexts, model.json, the compiled libraries), except timing.json (a measurement,
    never shipped); build.json too, but for its latency figures."""
    (root_a, _, _), (root_b, _, _) = marked_builds

    def without_latency(out):
        record = json.loads((out / "build.json").read_text())
        for target in record["targets"].values():
            target.pop("latency", None)
        return record

    for out in ("out", "out-more"):
        a, b = _digests(root_a / out), _digests(root_b / out)
        assert sorted(a) == sorted(b)
        differ = [rel for rel in a if a[rel] != b[rel] and rel not in ("x86_64/timing.json", "build.json")]
        assert differ == [], out
        assert without_latency(root_a / out) == without_latency(root_b / out)
