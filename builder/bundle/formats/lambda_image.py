"""Format `lambda-image`: a build context for an AWS Lambda container image (x86_64,
arm64): the lambda zip's handler, runtime and model in LAMBDA_TASK_ROOT of a Lambda Python
base image. Images may be 10 GB, so models too big for a zip (BERT-base) ship this way."""
from __future__ import annotations

import json
from pathlib import Path

from builder.bundle.archive import tree_size
from builder.bundle.context import write_context
from builder.bundle.formats.lambda_zip import (DEPLOYABLE_PYTHONS, LAMBDA_GLIBC, handler_source, lambda_json,
                                               python_platform)
from builder.bundle.formats.lambda_zip import precheck as zip_precheck
from builder.compiler.targets import TargetSpec
from builder.errors import BundleError
from builder.options import DEFAULT_PYTHON, BuildOptions
from runtime.manifest import read as read_manifest

NAME = "lambda-image"
CONTEXT = "lambda-image"
TASK_ROOT = "/var/task"  # LAMBDA_TASK_ROOT of every Lambda base image
IMAGE_LIMIT = 10 * 1024 ** 3  # Lambda: 10 GB uncompressed, base image included


def default_base(python: str) -> str:
    """AWS's public Lambda base image for `python` (multi-arch: the engine picks the platform)."""
    return f"public.ecr.aws/lambda/python:{python}"


def _python(options: BuildOptions) -> str:
    python = options.python or DEFAULT_PYTHON
    if python not in DEPLOYABLE_PYTHONS:
        raise BundleError(
            f"format {NAME}: python{python} Lambda images run Amazon Linux 2 (glibc {LAMBDA_GLIBC.get(python, '?')}), "
            "older than the TVM runtime needs (2.27)",
            hint=f"use --python {' or '.join(DEPLOYABLE_PYTHONS)}")
    return python


def precheck(target: TargetSpec, options: BuildOptions) -> None:
    zip_precheck(target, options, NAME)
    _python(options)


def build(target_dir: Path, target: TargetSpec, options: BuildOptions, progress) -> dict:
    zip_precheck(target, options, NAME)
    python = _python(options)
    manifest = read_manifest(target_dir)
    given = options.base_image(NAME, target.name)
    base = given or default_base(python)
    info = lambda_json(python_platform(python), target, package_type="Image")
    ctx = target_dir / CONTEXT
    record = write_context(
        ctx, target_dir, manifest, target, python=python, template="image/lambda.Dockerfile.j2",
        title="AWS Lambda container image", values={},
        code={"handler.py": handler_source(manifest, target),
              "lambda.json": json.dumps(info, indent=2, sort_keys=True) + "\n"},
        info={"format": NAME, "base_image": base, "base_image_default": given is None, "lambda": info},
        progress=progress, app_dir=TASK_ROOT, model_dir=TASK_ROOT)
    size = tree_size(ctx)
    if size > IMAGE_LIMIT:
        raise BundleError(f"the Lambda image's files alone are {size / 1024 ** 3:.1f} GiB; Lambda allows 10 GB "
                          "per image, base image included", where=str(ctx),
                          hint="use a smaller checkpoint, or the serve-image format (no such limit)")
    progress.info(f"    {CONTEXT}/: {size / 2 ** 20:.1f} MiB of files on {base}, python{python} "
                  f"{target.platform.name}; image tag {record['tag']} (edgebundle image build {ctx})")
    from builder.bundle.sam import write_sam_template

    sam = write_sam_template(target_dir, manifest)
    return {"path": CONTEXT, "tag": record["tag"], "sam_template": sam.name, "base_image": base, "python": python,
            "context_sha256": record["context_sha256"], "size": size}
