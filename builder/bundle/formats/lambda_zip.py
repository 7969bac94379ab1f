"""Format `lambda`: a deployable AWS Lambda zip for x86_64 or arm64.

Zip root: handler.py, lambda.json, runtime/, model.json + the libraries, weights and
preprocessing files it lists, libtvm_ffi.so + libtvm_runtime.so, and the third-party
packages runtime/ needs, unpacked from manylinux wheels for the Lambda platform and Python
version (never the host's site-packages).

Everything Lambda-specific lives here: its architectures, the glibc of each Python
runtime, which runtimes our libraries can run on, and its size limits.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from builder import elf
from builder.bundle.archive import tree_size, write_zip
from builder.bundle.manifest import file_record
from builder.bundle.render import render
from builder.bundle.stage import WHEEL_GLIBC, stage_bundle
from builder.compiler.targets import TargetSpec
from builder.errors import BundleError
from builder.options import DEFAULT_PYTHON, BuildOptions
from builder.versions import EDGEBUNDLE_VERSION
from runtime.manifest import read as read_manifest

# Lambda python3.12+ runs on Amazon Linux 2023 (glibc 2.34); python3.10/3.11 on Amazon
# Linux 2 (glibc 2.26), which is older than libtvm_runtime.so's 2.27: such zips are for
# local tests only.
LAMBDA_GLIBC = {"3.10": "2.26", "3.11": "2.26", "3.12": "2.34", "3.13": "2.34", "3.14": "2.34"}
DEPLOYABLE_PYTHONS = ("3.12", "3.13", "3.14")
# Our platform names are Lambda's architecture names.
ARCHITECTURES = ("x86_64", "arm64")

MIB = 1024 * 1024
UNZIPPED_LIMIT = 250 * MIB  # code + layers, unzipped (AWS: 262,144,000 bytes)
DIRECT_UPLOAD_LIMIT = 50 * MIB  # larger zips go through S3
DEFAULT_MEMORY_MB = 2048


def python_platform(python: str) -> dict:
    if python not in LAMBDA_GLIBC:
        raise BundleError(f"Lambda has no python{python} runtime",
                          hint=f"use --python one of {', '.join(LAMBDA_GLIBC)}")
    deployable = python in DEPLOYABLE_PYTHONS
    return {"python": python, "glibc": LAMBDA_GLIBC[python], "deployable": deployable,
            "os": "Amazon Linux 2023" if deployable else "Amazon Linux 2"}


def handler_source(manifest, target: TargetSpec) -> str:
    """handler.py at the task root: the same for the zip and the container image."""
    return render("lambda/handler.py.j2", edgebundle_version=EDGEBUNDLE_VERSION, model_name=manifest.model.name,
                  task=manifest.model.task, target=target.name)


def lambda_json(plat: dict, target: TargetSpec, **more) -> dict:
    """lambda.json: what `edgebundle invoke` and `deploy` need to run a bundle like Lambda."""
    return {"handler": "handler.handler", "python": plat["python"], "runtime": f"python{plat['python']}",
            "architecture": target.platform.name, "deployable": plat["deployable"],
            "platform_glibc": plat["glibc"], "edgebundle": EDGEBUNDLE_VERSION, **more}


def precheck(target: TargetSpec, options: BuildOptions, fmt: str = "lambda") -> None:
    if target.device != "cpu":
        raise BundleError(f"format {fmt} is not available for target {target.name}: AWS Lambda has no GPUs",
                          hint="build --target x86_64 or arm64 for Lambda")
    if target.platform.name not in ARCHITECTURES:
        raise BundleError(f"format {fmt} is not available for {target.platform.name} code",
                          hint=f"Lambda runs {', '.join(ARCHITECTURES)}")
    python_platform(options.python or DEFAULT_PYTHON)


class TooBigForZip(BundleError):
    """The zip would exceed Lambda's unzipped limit (format auto then writes lambda-image)."""


def _too_big(stage: Path, size: int, manifest, out_zip: Path) -> BundleError:
    """Say what makes the zip too big, and what can be done with this version."""
    weights = (stage / manifest.weights.file).stat().st_size if manifest.weights else 0
    code = sum((stage / lib.file).stat().st_size for lib in manifest.all_libraries)
    rest = size - weights - code
    return TooBigForZip(
        f"the Lambda bundle would be {size / MIB:.0f} MiB unzipped: weights {weights / MIB:.0f} MiB, compiled "
        f"code {code / MIB:.1f} MiB, runtime and packages {rest / MIB:.1f} MiB; Lambda allows "
        f"{UNZIPPED_LIMIT / MIB:.0f} MiB unzipped, layers included",
        where=str(out_zip),
        hint=((f"fp16 weights (the default; drop --weights fp32) halve them: about {(size - weights / 2) / MIB:.0f} "
               "MiB unzipped; otherwise "
               if manifest.weights and manifest.weights.storage == "fp32" and size - weights / 2 <= UNZIPPED_LIMIT
               else "")
              + ("the weights alone exceed what a zip may hold: use a smaller checkpoint (a distilled or MiniLM-size "
                 "model) for Lambda zips; " if weights > UNZIPPED_LIMIT else
                 "use a smaller checkpoint (or fewer --seq-buckets, each adds compiled code); "))
        + "or ship it as a Lambda container image (up to 10 GB): --format lambda-image, or --format auto to "
          "choose by size")


def build(target_dir: Path, target: TargetSpec, options: BuildOptions, progress) -> dict:
    precheck(target, options)
    manifest = read_manifest(target_dir)
    plat = python_platform(options.python or DEFAULT_PYTHON)
    if not plat["deployable"]:
        progress.warn(
            f"python{plat['python']} on Lambda runs {plat['os']} (glibc {plat['glibc']}), older than the "
            f"TVM runtime needs (2.27): this zip is for local tests only and is marked not deployable. "
            f"Use --python {', '.join(DEPLOYABLE_PYTHONS)} for Lambda.")
    arch = target.platform.name
    out_zip = target_dir / "lambda.zip"
    with tempfile.TemporaryDirectory(prefix="edgebundle-lambda-") as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        # Local-test Pythons (Amazon Linux 2) get the wheels of the newer platforms: they run
        # in the local sandbox, whose Debian is newer still.
        reqs = stage_bundle(stage, target_dir, manifest, target, plat["python"], progress,
                            glibc=plat["glibc"] if plat["deployable"] else WHEEL_GLIBC)
        (stage / "handler.py").write_text(handler_source(manifest, target))
        info = lambda_json(plat, target, memory_mb=DEFAULT_MEMORY_MB, requirements=reqs)
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
        if size > UNZIPPED_LIMIT:
            raise _too_big(stage, size, manifest, out_zip)
        with progress.step(f"write {out_zip.name}"):
            write_zip(stage, out_zip)
    zipped = out_zip.stat().st_size
    if zipped > DIRECT_UPLOAD_LIMIT:
        progress.warn(f"{out_zip} is {zipped / MIB:.0f} MiB zipped: above Lambda's 50 MiB direct upload, "
                      f"deploy it through S3")
    progress.info(f"    lambda.zip: {zipped / MIB:.1f} MiB zipped, {size / MIB:.1f} MiB unzipped, "
                  f"python{plat['python']} {arch}, glibc needed {info['glibc_required']}"
                  + ("" if plat["deployable"] else "  [LOCAL TEST ONLY: not deployable]"))
    from builder.bundle.sam import write_sam_template

    sam = write_sam_template(target_dir, manifest)
    progress.info(f"    {sam.name}: AWS SAM template (sam deploy), or: edgebundle deploy {target_dir} "
                  "--function-name NAME --role ROLE")
    return {"path": out_zip.name, **file_record(out_zip), "unzipped_size": size, "sam_template": sam.name,
            "python": plat["python"], "deployable": plat["deployable"],
            "glibc_required": info["glibc_required"]}
