"""Format `serve-image`: a build context for an image running the model server
(`python -m runtime.serve`: SageMaker /ping + /invocations, KServe v2, /metrics) on any
target, plus a Kubernetes Deployment + Service and a KServe InferenceService for it.

Base: `python:X.Y-slim` with the bundle's Python for every target. cuda adds no base of its
own: the CUDA runtime (libcudart.so.13) comes from NVIDIA's pinned wheel in deps/ and the
driver from the host (the NVIDIA container toolkit), so every image is COPY steps only,
built offline and byte-reproducibly. `--base-image` takes any image with `python3` of the
bundle's version on PATH.
"""
from __future__ import annotations

import math
from pathlib import Path

from builder.bundle.archive import tree_size
from builder.bundle.context import image_name, write_context
from builder.bundle.render import render
from builder.bundle.sizing import server_memory
from builder.bundle.stage import pinned
from builder.compiler.targets import TargetSpec
from builder.errors import BundleError
from builder.fsutil import atomic_write
from builder.options import DEFAULT_PYTHON, BuildOptions
from builder.versions import EDGEBUNDLE_VERSION
from runtime.manifest import read as read_manifest

NAME = "serve-image"
CONTEXT = "serve-image"
APP_DIR = "/opt/edgebundle/app"
MODEL_DIR = "/opt/edgebundle/model"
PORT = 8080
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
# What NVIDIA's own CUDA images set: the container toolkit injects the driver (libcuda.so.1)
# into containers whose image asks for it, including under a runtime=nvidia default without
# --gpus; NVIDIA_REQUIRE_CUDA makes it refuse a driver too old for CUDA 13 at start, with
# the reason, instead of a failed cuInit later.
CUDA_ENV = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            "NVIDIA_REQUIRE_CUDA": "cuda>=13.0"}
MIB = 1024 * 1024


def default_base(python: str) -> str:
    return f"docker.io/library/python:{python}-slim"


def _python(options: BuildOptions) -> str:
    python = options.python or DEFAULT_PYTHON
    if python not in PYTHONS:
        raise BundleError(f"format {NAME}: python{python} is not supported", hint=f"use --python {', '.join(PYTHONS)}")
    return python


def precheck(target: TargetSpec, options: BuildOptions) -> None:
    _python(options)


def sizing(target_dir: Path, manifest) -> dict:
    """Kubernetes requests from the model. Memory: builder/bundle/sizing.py's server_memory,
    rounded up to 64 MiB. CPU: 1, or 2 for models above 100 MiB."""
    model_bytes = sum(rec["size"] for rec in manifest.files.values())
    memory = math.ceil(server_memory(manifest) / (64 * MIB)) * 64
    cpus = 2 if model_bytes > 100 * MIB else 1
    return {"memory": f"{memory}Mi", "cpus": cpus,
            "sizing_note": f"model files {model_bytes / MIB:.0f} MiB -> memory {memory}Mi, cpu {cpus}"}


def build(target_dir: Path, target: TargetSpec, options: BuildOptions, progress) -> dict:
    python = _python(options)
    manifest = read_manifest(target_dir)
    given = options.base_image(NAME, target.name)
    base = given or default_base(python)
    gpu = target.device == "cuda"
    # No --port: the server takes SAGEMAKER_BIND_TO_PORT when set, else 8080; so does the check.
    entrypoint = ["python3", "-m", "runtime.serve", MODEL_DIR, "--host", "0.0.0.0"]
    health = ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % "
                               f"os.environ.get('SAGEMAKER_BIND_TO_PORT', '{PORT}'), timeout=2)"]
    ctx = target_dir / CONTEXT
    record = write_context(
        ctx, target_dir, manifest, target, python=python, template="image/serve.Dockerfile.j2",
        title="model server image",
        values={"gpu_env": CUDA_ENV if gpu else {}, "python": python, "port": PORT, "start_period_s": 60,
                "healthcheck": health, "entrypoint": entrypoint},
        code={}, extra_requirements=(pinned("waitress"),),
        info={"format": NAME, "base_image": base, "base_image_default": given is None, "port": PORT,
              "gpu": gpu, "entrypoint": entrypoint},
        progress=progress, app_dir=APP_DIR, model_dir=MODEL_DIR)
    size = sizing(target_dir, manifest)
    # Kubernetes names: DNS labels starting with a letter (KServe's too).
    app_name = image_name(manifest.model.name).replace(".", "-").replace("_", "-")[:50].strip("-") or "model"
    app_name = f"{'' if app_name[0].isalpha() else 'm-'}{app_name}-{target.name.replace('_', '-')}"
    written = {}
    for template, filename in (("image/k8s.yaml.j2", "k8s.yaml"), ("image/kserve.yaml.j2", "kserve.yaml")):
        atomic_write(target_dir / f"{CONTEXT}.{filename}", render(
            template, model_name=manifest.model.name, target=target.name, edgebundle_version=EDGEBUNDLE_VERSION,
            image=record["tag"], filename=f"{CONTEXT}.{filename}", app_name=app_name, port=PORT, gpu=gpu,
            startup_failures=60, **size).encode())
        written[filename] = f"{CONTEXT}.{filename}"
    files = tree_size(ctx)
    progress.info(f"    {CONTEXT}/: {files / MIB:.1f} MiB of files on {base}, python{python} "
                  f"{target.platform.name}{' + CUDA' if gpu else ''}; image tag {record['tag']}; "
                  f"{', '.join(written.values())} beside it")
    return {"path": CONTEXT, "tag": record["tag"], "base_image": base, "python": python,
            "context_sha256": record["context_sha256"], "size": files, "kubernetes": written}
