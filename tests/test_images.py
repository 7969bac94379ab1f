"""Formats lambda-image, serve-image and auto; `edgebundle image build`; Lambda images run
through the Runtime API; the serving image answering both protocols.

No registry is reachable: the images are built on stand-in bases made locally
(tests/standin_images.py) and passed with --base-image, as a user without network would."""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import reference
import standin_images
from builder.bundle.context import context_digest, image_name
from builder.bundle.formats import FORMATS
from builder.compiler.targets import TARGETS, resolve_target
from builder.errors import BundleError, ToolMissingError
from builder.options import BuildOptions
from builder.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
HAS_PODMAN = shutil.which("podman") is not None and shutil.which("runc") is not None
needs_podman = pytest.mark.skipif(not HAS_PODMAN, reason="podman (and runc) are not installed: examples/setup.sh")
SENTENCES = ["The quick brown fox.", "Container images without PyTorch."]


def _format(fmt: str, target_dir: Path, target: str = "x86_64", host: str = "x86_64", **options) -> dict:
    spec = resolve_target(target, host)
    return FORMATS[fmt].build(target_dir, spec, BuildOptions(targets=(target,), **options), Progress(quiet=True))


def _copy_target(src: Path, dest: Path) -> Path:
    """A private copy of a session build's target directory (formats write into it)."""
    from runtime.manifest import read

    dest.mkdir(parents=True)
    m = read(src)
    for name in ["model.json", *m.files]:
        shutil.copy2(src / name, dest / name)
    return dest


def _cli(*argv, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------ fast: rendering, options


def test_base_image_option_keys():
    from builder.cli import _base_image

    assert _base_image("localhost/x:1") == ("", "localhost/x:1")
    assert _base_image("serve-image=reg.io/a/b:2") == ("serve-image", "reg.io/a/b:2")
    assert _base_image("serve-image/cuda=nvcr.io/n/c:13") == ("serve-image/cuda", "nvcr.io/n/c:13")
    for bad in ("nosuch=img", "serve-image/nosuch=img", "lambda="):
        with pytest.raises(Exception):
            _base_image(bad)
    o = BuildOptions(base_images=(("", "all"), ("serve-image", "serve"), ("serve-image/cuda", "gpu")))
    assert o.base_image("serve-image", "cuda") == "gpu"
    assert o.base_image("serve-image", "x86_64") == "serve"
    assert o.base_image("lambda-image", "arm64") == "all"
    assert BuildOptions().base_image("lambda-image", "x86_64") is None


def test_image_names():
    assert image_name("sentence-transformers/all-MiniLM-L6-v2") == "all-minilm-l6-v2"
    assert image_name("My Model!") == "my-model"
    assert image_name("///") == "model"


def test_format_prechecks():
    cuda, x86 = resolve_target("cuda", "x86_64"), TARGETS["x86_64"]
    with pytest.raises(BundleError, match="no GPUs"):
        FORMATS["lambda-image"].precheck(cuda, BuildOptions())
    with pytest.raises(BundleError, match="Amazon Linux 2"):
        FORMATS["lambda-image"].precheck(x86, BuildOptions(python="3.11"))
    with pytest.raises(BundleError, match="no GPUs"):
        FORMATS["auto"].precheck(cuda, BuildOptions())
    # cuda serving sits on python:X.Y-slim like the CPU targets: any supported Python.
    for python in (None, "3.10", "3.12", "3.13", "3.14"):
        FORMATS["serve-image"].precheck(cuda, BuildOptions(python=python))
    with pytest.raises(BundleError, match="python3.9 is not supported"):
        FORMATS["serve-image"].precheck(cuda, BuildOptions(python="3.9"))


def test_no_engine_says_what_to_run(tmp_path, monkeypatch):
    from builder.container.engine import find_engine

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError) as e:
        find_engine(commands=["podman build --timestamp 0 -t T CTX"])
    assert "podman build --timestamp 0 -t T CTX" in str(e.value) and "install podman" in str(e.value)


def test_image_build_without_engine_names_commands(tmp_path):
    ctx = tmp_path / "serve-image"
    ctx.mkdir()
    (ctx / "image.json").write_text(json.dumps({"format": "serve-image", "tag": "edgebundle/m:x86_64-abc",
                                                "platform": "linux/amd64", "base_image": "b",
                                                "context_sha256": "abc"}))
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python only: no engine
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "image", "build", str(ctx)], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no container engine" in proc.stderr
    assert f"podman build --timestamp 0 --format docker --platform linux/amd64 -t edgebundle/m:x86_64-abc {ctx}" \
        in proc.stderr
    assert "podman save --format oci-archive" in proc.stderr


# ------------------------------------------------------------------ contexts (slow: tiny builds)


@pytest.mark.slow
def test_contexts_layout_deterministic_and_yaml(tiny_bert_build, tmp_path):
    a = _copy_target(tiny_bert_build, tmp_path / "a")
    b = _copy_target(tiny_bert_build, tmp_path / "b")
    rec = _format("serve-image", a, base_images={"": "localhost/base:1"})
    rec_b = _format("serve-image", b, base_images={"": "localhost/base:1"})
    assert rec["tag"] == rec_b["tag"] and rec["context_sha256"] == context_digest(a / "serve-image")
    files_a = sorted(p.relative_to(a).as_posix() for p in (a / "serve-image").rglob("*"))
    files_b = sorted(p.relative_to(b).as_posix() for p in (b / "serve-image").rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        pa, pb = a / rel, b / rel
        if pa.is_file():
            assert pa.read_bytes() == pb.read_bytes(), rel
            assert pa.stat().st_mtime == pb.stat().st_mtime == 315532800
    ctx = a / "serve-image"
    dockerfile = (ctx / "Dockerfile").read_text()
    # deps, then the model, then code: a code change rebuilds only the last layer.
    assert dockerfile.index('COPY ["deps/"') < dockerfile.index('COPY ["model/"') < dockerfile.index('COPY ["code/"')
    assert "FROM localhost/base:1" in dockerfile and "USER 65532:65532" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/ping" in dockerfile
    assert 'EDGEBUNDLE_PYTHON="3.13"' in dockerfile  # what the server checks its Python against
    assert not [line for line in dockerfile.splitlines() if line.startswith("RUN ")]  # nothing to emulate
    assert (ctx / "deps" / "waitress" / "__init__.py").is_file() and (ctx / "deps" / "libtvm_runtime.so").is_file()
    assert (ctx / "code" / "runtime" / "serve.py").is_file() and (ctx / "model" / "model.weights").is_file()
    info = json.loads((ctx / "image.json").read_text())
    assert info["tag"] == f"localhost/edgebundle/{image_name(info['model'])}:x86_64-{rec['context_sha256'][:12]}"
    assert info["platform"] == "linux/amd64"
    assert info["labels"]["io.edgebundle.weights.sha256"] == json.loads(
        (a / "model.json").read_text())["files"]["model.weights"]["sha256"]
    # Kubernetes and KServe, beside the context, for that image.
    docs = list(yaml.safe_load_all((a / "serve-image.k8s.yaml").read_text()))
    deploy, service = docs
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert deploy["kind"] == "Deployment" and service["kind"] == "Service"
    assert container["image"] == info["tag"] and container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"]["memory"].endswith("Mi") and "nvidia.com/gpu" not in \
        container["resources"]["limits"]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    isvc = yaml.safe_load((a / "serve-image.kserve.yaml").read_text())
    assert isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == info["tag"]


@pytest.mark.slow
def test_lambda_image_context_and_auto(tiny_bert_build, tmp_path, monkeypatch):
    t = _copy_target(tiny_bert_build, tmp_path / "t")
    rec = _format("auto", t)
    assert rec["chosen"] == "lambda" and "fits" in rec["reason"] and (t / "lambda.zip").is_file()
    from builder.bundle.formats import lambda_zip

    # The same bundle against a smaller limit: auto writes the image context instead.
    monkeypatch.setattr(lambda_zip, "UNZIPPED_LIMIT", 1024 * 1024)
    rec = _format("auto", t)
    assert rec["chosen"] == "lambda-image" and "unzipped" in rec["reason"]
    ctx = t / "lambda-image"
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "FROM public.ecr.aws/lambda/python:3.13" in dockerfile and 'CMD ["handler.handler"]' in dockerfile
    assert (ctx / "code" / "handler.py").is_file() and (ctx / "code" / "lambda.json").is_file()
    assert not (ctx / "deps" / "waitress").exists()  # the server library stays out of Lambda bundles


@pytest.mark.slow
def test_cli_build_with_image_formats(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    _cli("build", tiny_bert_dir, "--format", "serve-image", "--format", "lambda-image", "--seq-len", "32",
         "--base-image", "serve-image=localhost/s:1", "--base-image", "lambda-image=localhost/l:1",
         "--out", out, "--quiet")
    record = json.loads((out / "build.json").read_text())
    formats = record["targets"]["x86_64"]["formats"]
    assert formats["serve-image"]["base_image"] == "localhost/s:1"
    assert formats["lambda-image"]["base_image"] == "localhost/l:1"
    assert (out / "x86_64" / "serve-image" / "Dockerfile").is_file()


# ------------------------------------------------------------------ images (podman)


def _rmi(tag: str) -> None:
    """Test images go when their test is done (the stand-in bases stay, cached)."""
    subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)


def _invoke_image(ref, events: list) -> tuple[int, list, str]:
    from builder.local.lambda_runtime import invoke_image

    out, err = io.StringIO(), io.StringIO()
    rc = invoke_image(ref, [json.dumps(e).encode() for e in events], out=out, err=err)
    answers = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert len(answers) == len(events), err.getvalue()[-3000:]
    return rc, answers, err.getvalue()


@pytest.fixture(scope="module")
def lambda_image_x86(tiny_bert_build, tmp_path_factory):
    from builder.container.images import build_image

    t = _copy_target(tiny_bert_build, tmp_path_factory.mktemp("limg") / "x86_64")
    _format("lambda-image", t, base_images={"": standin_images.lambda_base("x86_64")})
    built = build_image(t / "lambda-image")
    yield t, built
    _rmi(built["tag"])


@needs_podman
@pytest.mark.slow
def test_lambda_image_x86_64_matches_pytorch(tiny_bert_dir, lambda_image_x86):
    t, built = lambda_image_x86
    tensors = reference.tokenize(t / "tokenizer.json", SENTENCES)
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    rc, (tensor_answer, task_answer, bad), log = _invoke_image(
        built["tag"], [{"tensors": tensors}, {"inputs": SENTENCES}, {"inputs": 7}])
    np.testing.assert_allclose(np.array(tensor_answer["tensors"]["sentence_embedding"]), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(task_answer), ref, atol=1e-4, rtol=0)
    assert bad["errorType"] == "BadInput" and rc == 1
    assert "init:" in log
    # The OCI archive beside the context loads and answers the same.
    archive = Path(built["archive"])
    assert archive.name == "lambda-image.oci.tar"
    rc, (again,), _ = _invoke_image(archive, [{"tensors": tensors}])
    assert again == tensor_answer and rc == 0
    # An archive whose image the store lacked: loaded for the call, removed after it.
    _rmi(built["tag"])
    rc, (again,), _ = _invoke_image(archive, [{"tensors": tensors}])
    assert again == tensor_answer and rc == 0
    assert subprocess.run(["podman", "image", "exists", built["tag"]]).returncode != 0


@needs_podman
@pytest.mark.slow
def test_image_build_is_reproducible(lambda_image_x86):
    from builder.container.images import build_image

    t, first = lambda_image_x86
    _rmi(first["tag"])
    # No cached layers: built again from the context alone.
    again = build_image(t / "lambda-image", archive=False)
    assert again["layers"] == first["layers"] and len(first["layers"]) >= 4


@needs_podman
@pytest.mark.slow
@pytest.mark.emulated_arm64
def test_lambda_image_arm64_matches_pytorch(tiny_bert_dir, tiny_bert_arm64_build, tmp_path, request):
    from builder.container.images import build_image

    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("qemu-aarch64 is not registered with binfmt_misc (examples/setup.sh does it)")
    t = _copy_target(tiny_bert_arm64_build, tmp_path / "arm64")
    _format("lambda-image", t, target="arm64", base_images={"": standin_images.lambda_base("arm64")})
    built = build_image(t / "lambda-image", archive=False)
    request.addfinalizer(lambda: _rmi(built["tag"]))
    assert built["platform"] == "linux/arm64"
    tensors = reference.tokenize(t / "tokenizer.json", SENTENCES)
    rc, (answer,), _ = _invoke_image(built["tag"], [{"tensors": tensors}])
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    np.testing.assert_allclose(np.array(answer["tensors"]["sentence_embedding"]), ref, atol=1e-4, rtol=0)
    arch = subprocess.run(["podman", "image", "inspect", "--format", "{{.Architecture}}", built["tag"]],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert arch == "arm64" and rc == 0


def _http(port: int, method: str, path: str, body=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}


@needs_podman
@pytest.mark.slow
def test_serve_image_answers_both_protocols(tiny_bert_cls_dir, tiny_bert_cls_build, tmp_path, request):
    """Started the way SageMaker starts a serving container (`docker run IMAGE serve`, the
    port in SAGEMAKER_BIND_TO_PORT), answering /ping within SageMaker's startup window and
    the request bytes `invoke --sagemaker-endpoint` sends; then KServe v2 on the same server."""
    from builder.container.images import build_image
    from builder.deploy.remote import endpoint_request
    from builder.deploy.sagemaker import STARTUP_HEALTH_CHECK_S

    t = _copy_target(tiny_bert_cls_build, tmp_path / "x86_64")
    _format("serve-image", t, base_images={"": standin_images.serve_base("x86_64")})
    built = build_image(t / "serve-image", archive=False)
    request.addfinalizer(lambda: _rmi(built["tag"]))
    name = f"edgebundle-test-{os.getpid()}"
    port = 18000 + os.getpid() % 1000
    started = time.monotonic()
    subprocess.run(["podman", "run", "-d", "--rm", "--name", name, "-e", "SAGEMAKER_BIND_TO_PORT=9090",
                    "-p", f"127.0.0.1:{port}:9090", built["tag"], "serve"], check=True, capture_output=True)
    try:
        while True:
            try:
                status, _ = _http(port, "GET", "/ping")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() - started < min(60, STARTUP_HEALTH_CHECK_S), subprocess.run(
                ["podman", "logs", name], capture_output=True, text=True).stdout[-2000:]
            time.sleep(0.3)
        tensors = reference.tokenize(t / "tokenizer.json", SENTENCES[:1])
        ref = reference.bert_logits(tiny_bert_cls_dir, tensors)
        sent = endpoint_request(json.dumps({"tensors": tensors}).encode())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/invocations", body=sent["Body"],
                     headers={"Content-Type": sent["ContentType"], "Accept": sent["Accept"]})
        resp = conn.getresponse()
        status, answer = resp.status, json.loads(resp.read())
        conn.close()
        assert status == 200 and resp.getheader("Content-Type").startswith("application/json")
        np.testing.assert_allclose(np.array(answer["tensors"]["logits"]), ref, atol=1e-4, rtol=0)
        status, labels = _http(port, "POST", "/invocations", {"inputs": SENTENCES[0]})
        assert status == 200 and labels[0]["label"] == ["negative", "neutral", "positive"][int(np.argmax(ref[0]))]
        v2 = {"inputs": [{"name": k, "shape": [1, len(v[0])], "datatype": "INT64", "data": v[0]}
                         for k, v in tensors.items()]}
        from runtime.manifest import read
        from runtime.server import default_name

        status, answer = _http(port, "POST", f"/v2/models/{default_name(read(t).model.name)}/infer", v2)
        assert status == 200 and answer["outputs"][0]["shape"] == [1, 3]
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]), ref[0], atol=1e-4, rtol=0)
        assert _http(port, "GET", "/v2/health/ready")[0] == 200
        # Not root, and the healthcheck passes.
        user = subprocess.run(["podman", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert user == "65532"
        assert subprocess.run(["podman", "healthcheck", "run", name], capture_output=True).returncode == 0
    finally:
        stop = subprocess.run(["podman", "stop", "-t", "20", name], capture_output=True, text=True)
    assert stop.returncode == 0


@needs_podman
@pytest.mark.slow
def test_cuda_serve_image_without_apt(tiny_resnet_multi_build, tmp_path, request):
    """The cuda serving image: python:X.Y-slim (a stand-in here) plus NVIDIA's pinned CUDA
    runtime wheel, COPY steps only, so it builds offline and reproducibly; inside it the
    runtime loads libcudart.so.13 from the wheel and, with no GPU driver here, stops at the
    driver with the reason. Answering on a GPU: tests/gpu/check.py."""
    from builder.bundle.stage import CUDA_RUNTIME_WHEEL
    from builder.container.images import build_image

    out, _ = tiny_resnet_multi_build
    # NVIDIA's base is gone: the default is the bundle Python's slim image, as for CPUs.
    t0 = _copy_target(out / "cuda", tmp_path / "cuda-default")
    rec = _format("serve-image", t0, target="cuda")
    assert rec["base_image"] == "docker.io/library/python:3.13-slim" and rec["python"] == "3.13"

    t = _copy_target(out / "cuda", tmp_path / "cuda")
    rec = _format("serve-image", t, target="cuda", base_images={"": standin_images.serve_base("x86_64")},
                  python="3.13")
    ctx = t / "serve-image"
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "\nRUN " not in dockerfile and "apt-get" not in dockerfile
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=13.0"' in dockerfile
    info = json.loads((ctx / "image.json").read_text())
    assert CUDA_RUNTIME_WHEEL in info["requirements"]
    lib = ctx / "deps" / "nvidia" / "cu13" / "lib"
    assert (ctx / "deps" / "libtvm_runtime_cuda.so").is_file() and (lib / "libcudart.so.13").is_file()
    # Only what runs: the wheel's headers and static archives are pruned.
    assert not (ctx / "deps" / "nvidia" / "cu13" / "include").exists() and not list(lib.glob("*.a"))

    built = build_image(ctx, archive=False)
    request.addfinalizer(lambda: _rmi(built["tag"]))
    assert built["tag"] == rec["tag"]
    _rmi(built["tag"])
    again = build_image(ctx, archive=False)  # no cached layers: the same bytes from the context alone
    assert again["layers"] == built["layers"]

    probe = ("import os, sys\n"
             "from runtime import _tvm\n"
             "from runtime.errors import DeviceUnavailable\n"
             "try:\n"
             "    _tvm.load_tvm_runtime(__import__('pathlib').Path(sys.argv[1]), 'cuda')\n"
             "except DeviceUnavailable as e:\n"
             "    print('unavailable:', e)\n"
             "maps = open('/proc/self/maps').read()\n"
             "print('cudart:', sorted({l.split()[-1] for l in maps.splitlines() if 'libcudart' in l}))\n")
    run = subprocess.run(["podman", "run", "--rm", "--entrypoint", "python3", built["tag"], "-c", probe,
                          "/opt/edgebundle/model"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cudart: ['/opt/edgebundle/app/nvidia/cu13/lib/libcudart.so.13']" in run.stdout, run.stdout
    assert "unavailable: cuda: the NVIDIA driver library libcuda.so.1 is not installed" in run.stdout, run.stdout
    # The server as SageMaker / Kubernetes start it: refuses with that reason, not a traceback.
    serve = subprocess.run(["podman", "run", "--rm", built["tag"], "serve"], capture_output=True, text=True,
                           timeout=120)
    assert serve.returncode != 0 and "libcuda.so.1" in serve.stderr + serve.stdout
    assert "Traceback" not in serve.stderr
    k8s = list(yaml.safe_load_all((t / "serve-image.k8s.yaml").read_text()))
    assert k8s[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
