"""Pieces every bundle format shares."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import runtime
from builder.bundle import wheels
from builder.cache import cache_dir
from builder.errors import BundleError
from builder.fsutil import atomic_write
from builder.options import DEFAULT_PYTHON
from builder.versions import dist_version
from runtime.manifest import FILENAME, Manifest

# runtime/ ships as source, from wherever this installation keeps it (a checkout or
# site-packages): importing it is cheap, it is the standard library only.
RUNTIME_DIR = Path(runtime.__file__).resolve().parent
# Wheels for bundles are picked for the newest glibc among their platforms (Lambda's Amazon
# Linux 2023, Debian 12+); formats with older platforms pass their own.
WHEEL_GLIBC = "2.34"


def copy_runtime(dest_root: Path) -> None:
    """runtime/ as source only (no caches: bytecode would break determinism)."""
    dest = dest_root / "runtime"
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(RUNTIME_DIR.glob("*.py")):
        shutil.copy2(src, dest / src.name)


def stage_model(target_dir: Path, dest: Path, manifest: Manifest) -> None:
    """model.json and every file it lists (model.so, tokenizer.json, ...)."""
    for name in [FILENAME, *manifest.files]:
        shutil.copy2(target_dir / name, dest / name)


# Parts of wheels a running bundle never touches: headers, sources, vendored build trees,
# test suites.
_PRUNE_DIRS = {"include", "3rdparty", "src", "tests", "__pycache__", "cmake"}
_PRUNE_SUFFIXES = (".pyx", ".pxd", ".pxi", ".pyi", ".h", ".hpp", ".cc", ".c", ".cu", ".a")

# libcudart.so.13, which libtvm_runtime_cuda.so links, from NVIDIA's wheel rather than a
# CUDA base image (no apt, no registry: every image is COPY steps over python:X.Y-slim).
# 13.0 update 2, the release of the nvcc the cuda target is built and tested with; CUDA's
# minor-version compatibility runs it on any CUDA 13 driver (>= 580). runtime/_tvm.py
# finds it at nvidia/cu13/lib in the bundle's packages.
CUDA_RUNTIME_WHEEL = "nvidia-cuda-runtime==13.0.96"


def runtime_requirements(manifest: Manifest) -> list[str]:
    """Exact versions of the Python packages runtime/ imports, equal to the build's (the
    tokenizer the build configured must behave the same at run time). Neither numpy nor the
    tvm_ffi Python package: runtime/ talks to libtvm_ffi.so through ctypes."""
    names = {"text": ["tokenizers"], "image": ["pillow"]}.get(manifest.preprocessing.kind, [])
    return [pinned(n) for n in names]


# Native libraries every bundle ships at its root: (pip distribution, path in its wheel).
# libtvm_ffi.so must be the very build libtvm_runtime.so was linked against: both pinned.
_NATIVE = {"libtvm_ffi.so": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"),
           "libtvm_runtime.so": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
           "libtvm_runtime_cuda.so": ("apache-tvm", "tvm/lib/libtvm_runtime_cuda.so")}


def tvm_runtime_libs(arch: str, progress, cuda: bool = False) -> dict[str, Path]:
    """libtvm_ffi.so, libtvm_runtime.so (and libtvm_runtime_cuda.so) from the apache-tvm-ffi
    and apache-tvm wheels of the build's versions for `arch`, cached; the 300 MB compiler
    and the Python packages never ship."""
    names = ["libtvm_ffi.so", "libtvm_runtime.so"] + (["libtvm_runtime_cuda.so"] if cuda else [])
    found = {}
    for dist in dict.fromkeys(_NATIVE[n][0] for n in names):
        version = dist_version(dist)
        if version is None:
            raise BundleError(f"{dist} is not installed in the build environment", hint="pip install -e .")
        folder = cache_dir() / "tvm-runtime" / f"{dist}-{version}-{arch}"
        wanted = [n for n in names if _NATIVE[n][0] == dist]
        if not all((folder / n).is_file() for n in wanted):
            [whl] = wheels.fetch_wheels([f"{dist}=={version}"], python_version=DEFAULT_PYTHON,
                                        platforms=wheels.manylinux_platforms(arch, WHEEL_GLIBC), progress=progress)
            folder.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(whl) as zf:
                for n in wanted:
                    atomic_write(folder / n, zf.read(_NATIVE[n][1]))
        found.update({n: folder / n for n in wanted})
    return {n: found[n] for n in names}


def _prune(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if not path.exists():
            continue
        if path.is_dir() and path.name in _PRUNE_DIRS and len(path.relative_to(root).parts) > 1:
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in _PRUNE_SUFFIXES:
            path.unlink()


def pinned(name: str) -> str:
    """`name==<the version installed here>`: what a bundle ships is what the build ran."""
    version = dist_version(name)
    if version is None:
        raise BundleError(f"{name} is not installed in the build environment", hint="pip install -e .")
    return f"{name}=={version}"


def vendor_runtime(stage: Path, manifest: Manifest, target, python: str, progress,
                   glibc: str = WHEEL_GLIBC, extra: tuple = ()) -> list[str]:
    """Unpack what runtime/ needs for `target`'s platform and `python` into stage: the
    manylinux wheels (never the host's site-packages) and the TVM runtime libraries.
    `extra`: more pinned requirements (the model server's HTTP library); cuda targets add
    the CUDA runtime's wheel."""
    with progress.step(f"vendor wheels for python{python} {target.arch}"):
        reqs = runtime_requirements(manifest) + list(extra)
        if target.device == "cuda":
            reqs.append(CUDA_RUNTIME_WHEEL)
        for whl in wheels.fetch_wheels(reqs, python_version=python,
                                       platforms=wheels.manylinux_platforms(target.arch, glibc),
                                       progress=progress):
            wheels.unpack_wheel(whl, stage)
        for name, path in tvm_runtime_libs(target.arch, progress, cuda=target.device == "cuda").items():
            shutil.copy2(path, stage / name)
        _prune(stage)
    return reqs


def stage_bundle(stage: Path, target_dir: Path, manifest: Manifest, target, python: str, progress,
                 with_model: bool = True, glibc: str = WHEEL_GLIBC) -> list[str]:
    """What every bundle holds, staged: the vendored runtime dependencies, runtime/ and
    (with_model) model.json and its files. Returns the pinned requirements."""
    reqs = vendor_runtime(stage, manifest, target, python, progress, glibc)
    if with_model:
        stage_model(target_dir, stage, manifest)
    copy_runtime(stage)
    return reqs
