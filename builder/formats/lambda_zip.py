"""Format `lambda`: a deployable AWS Lambda zip for x86_64 or arm64.

Zip root: handler.py, lambda.json, runtime/, model.so + model.json + preprocessing files,
libtvm_runtime.so, and the third-party packages runtime/ needs, unpacked from manylinux
wheels for the Lambda platform and Python version (never the host's site-packages).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from .. import elf, wheels
from ..cache import cache_dir
from ..errors import BundleError
from ..render import render
from ..targets import LAMBDA_DEPLOYABLE_PYTHONS, LAMBDA_GLIBC, TargetSpec
from ..versions import EDGEBUNDLE_VERSION, dist_version
from ..ziputil import tree_size, write_zip
from .common import copy_runtime, file_record, stage_model

MIB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT = 250 * MIB  # code + layers, unzipped (AWS: 262,144,000 bytes)
LAMBDA_DIRECT_UPLOAD_LIMIT = 50 * MIB  # larger zips go through S3
DEFAULT_MEMORY_MB = 2048

# Parts of wheels a running bundle never touches: headers, sources, vendored build trees,
# test suites. Paths are matched per component.
_PRUNE_DIRS = {"include", "3rdparty", "src", "tests", "__pycache__", "cmake"}
_PRUNE_SUFFIXES = (".pyx", ".pxd", ".pxi", ".pyi", ".h", ".hpp", ".cc", ".c", ".cu")
_PRUNE_NAMES: set = set()  # tvm_ffi dlopens libtvm_ffi_testing.so at import: keep it


def runtime_requirements(manifest: dict) -> list[str]:
    """Exact versions of what runtime/ imports, equal to the build's (the tokenizer the build
    configured must behave the same at run time; tvm_ffi must match libtvm_runtime)."""
    names = ["apache-tvm-ffi", "numpy", "typing_extensions"]
    kind = manifest["preprocessing"]["kind"]
    if kind == "text":
        names.append("tokenizers")
    elif kind == "image":
        names.append("pillow")
    reqs = []
    for n in names:
        v = dist_version(n)
        if v is None:
            raise BundleError(f"{n} is not installed in the build environment", hint="pip install -e .")
        reqs.append(f"{n}=={v}")
    return reqs


def fetch_tvm_runtime(arch: str, platforms: list[str], progress) -> Path:
    """libtvm_runtime.so from the apache-tvm wheel of the build's version for `arch`."""
    version = dist_version("apache-tvm")
    dest = cache_dir() / "tvm-runtime" / f"{version}-{arch}" / "libtvm_runtime.so"
    if dest.is_file():
        return dest
    [whl] = wheels.fetch_wheels([f"apache-tvm=={version}"], python_version="3.13",
                                platforms=platforms, progress=progress)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        data = zf.read("tvm/lib/libtvm_runtime.so")
    tmp = dest.with_suffix(".partial")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def _prune(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = path.relative_to(root).parts
        if not path.exists():
            continue
        if path.is_dir() and path.name in _PRUNE_DIRS and len(rel) > 1:
            shutil.rmtree(path)
        elif path.is_file() and (path.name in _PRUNE_NAMES or path.suffix in _PRUNE_SUFFIXES):
            path.unlink()


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
    platforms = wheels.manylinux_platforms(target.arch, "2.34")
    out_zip = target_dir / "lambda.zip"
    with tempfile.TemporaryDirectory(prefix="edgebundle-lambda-") as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        with progress.step(f"vendor wheels for python{plat['python']} {target.arch}"):
            reqs = runtime_requirements(manifest)
            for whl in wheels.fetch_wheels(reqs, python_version=plat["python"], platforms=platforms,
                                           progress=progress):
                wheels.unpack_wheel(whl, stage)
            shutil.copy2(fetch_tvm_runtime(target.arch, platforms, progress), stage / "libtvm_runtime.so")
            _prune(stage)
        stage_model(target_dir, stage, manifest)
        copy_runtime(stage)
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
