"""Format `lambda`: a deployable AWS Lambda zip for x86_64 or arm64.

Zip root: handler.py, lambda.json, runtime/, model.so + model.json + preprocessing files,
libtvm_runtime.so, and the third-party packages runtime/ needs, unpacked from manylinux
wheels for the Lambda platform and Python version (never the host's site-packages).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from builder.bundle import elf
from builder.errors import BundleError
from builder.bundle.render import render
from builder.compiler.targets import LAMBDA_DEPLOYABLE_PYTHONS, LAMBDA_GLIBC, TargetSpec
from builder.versions import EDGEBUNDLE_VERSION
from builder.bundle.archive import tree_size, write_zip
from builder.bundle.stage import file_record, stage_bundle

MIB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT = 250 * MIB  # code + layers, unzipped (AWS: 262,144,000 bytes)
LAMBDA_DIRECT_UPLOAD_LIMIT = 50 * MIB  # larger zips go through S3
DEFAULT_MEMORY_MB = 2048

def python_platform(python: str) -> dict:
    if python not in LAMBDA_GLIBC:
        raise BundleError(f"Lambda has no python{python} runtime",
                          hint=f"use --python one of {', '.join(LAMBDA_GLIBC)}")
    deployable = python in LAMBDA_DEPLOYABLE_PYTHONS
    return {"python": python, "glibc": LAMBDA_GLIBC[python], "deployable": deployable,
            "os": "Amazon Linux 2023" if deployable else "Amazon Linux 2"}


def precheck(target: TargetSpec, options: dict) -> None:
    if target.lambda_arch is None:
        raise BundleError(f"format lambda is not available for target {target.name}: {target.lambda_refusal}",
                          hint="use the image or edge format for this target")
    python_platform(options.get("python") or "3.13")


def build(target_dir: Path, target: TargetSpec, options: dict, progress) -> dict:
    precheck(target, options)
    manifest = json.loads((target_dir / "model.json").read_text())
    plat = python_platform(options.get("python") or "3.13")
    if not plat["deployable"]:
        progress.warn(
            f"python{plat['python']} on Lambda runs {plat['os']} (glibc {plat['glibc']}), older than the "
            f"TVM runtime needs (2.27): this zip is for local tests only and is marked not deployable. "
            f"Use --python 3.12, 3.13 or 3.14 for Lambda.")
    out_zip = target_dir / "lambda.zip"
    with tempfile.TemporaryDirectory(prefix="edgebundle-lambda-") as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        reqs = stage_bundle(stage, target_dir, manifest, target, plat["python"], progress)
        (stage / "handler.py").write_text(render(
            "lambda/handler.py.j2", edgebundle_version=EDGEBUNDLE_VERSION,
            model_name=manifest["model"]["name"], task=manifest["model"]["task"],
            target=target.name, model_subdir="."))
        # lambda.json: what `edgebundle invoke` and `deploy` need to run it like Lambda.
        info = {
            "handler": "handler.handler",
            "python": plat["python"],
            "runtime": f"python{plat['python']}",
            "architecture": target.lambda_arch,
            "deployable": plat["deployable"],
            "platform_glibc": plat["glibc"],
            "memory_mb": DEFAULT_MEMORY_MB,
            "requirements": reqs,
            "edgebundle": EDGEBUNDLE_VERSION,
        }
        with progress.step("ELF audit"):
            audit = elf.audit_tree(stage, machine=target.elf_machine,
                                   max_glibc=plat["glibc"] if plat["deployable"] else None,
                                   what=f"{out_zip} (staged)")
        info["glibc_required"] = elf.max_glibc_of(audit)
        if not plat["deployable"]:
            info["not_deployable_reason"] = (f"needs glibc {info['glibc_required']}, python{plat['python']} "
                                             f"Lambda has {plat['glibc']}")
        (stage / "lambda.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        size = tree_size(stage)
        if size > LAMBDA_UNZIPPED_LIMIT:
            model_size = (stage / manifest["library"]).stat().st_size
            raise BundleError(
                f"the Lambda bundle would be {size / MIB:.0f} MiB unzipped ({model_size / MIB:.0f} MiB of it "
                f"model.so); Lambda allows {LAMBDA_UNZIPPED_LIMIT / MIB:.0f} MiB unzipped, layers included",
                where=str(out_zip),
                hint="use --format image (container images may be 10 GB) or a smaller model")
        with progress.step(f"write {out_zip.name}"):
            write_zip(stage, out_zip)
    zipped = out_zip.stat().st_size
    if zipped > LAMBDA_DIRECT_UPLOAD_LIMIT:
        progress.warn(f"{out_zip} is {zipped / MIB:.0f} MiB zipped: above Lambda's 50 MiB direct upload, "
                      f"deploy it through S3")
    progress.info(f"    lambda.zip: {zipped / MIB:.1f} MiB zipped, {size / MIB:.1f} MiB unzipped, "
                  f"python{plat['python']} {target.lambda_arch}, glibc needed {info['glibc_required']}"
                  + ("" if plat["deployable"] else "  [LOCAL TEST ONLY: not deployable]"))
    return {"path": out_zip.name, **file_record(out_zip), "unzipped_size": size,
            "python": plat["python"], "deployable": plat["deployable"],
            "glibc_required": info["glibc_required"]}
