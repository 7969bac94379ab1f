"""model.json, written here and only here on the build side (runtime/manifest.py defines it
and reads it everywhere)."""
from __future__ import annotations

from pathlib import Path

from builder import elf
from builder.fsutil import atomic_write
from builder.options import MAX_BATCH
from builder.versions import build_versions, dist_version
from runtime.integrity import sha256_of
from runtime.manifest import FILENAME, DeviceCode, Manifest, ModelInfo, TargetInfo, Versions, WeightsFile

# What a GPU model needs beside model.so at run time (the image / edge formats ship or
# require these; the manifest accounts for them either way).
CUDA_SYSTEM_LIBRARIES = [
    {"name": "libcudart.so.13", "what": "CUDA 13 runtime, linked by libtvm_runtime_cuda.so",
     "provided_by": "the CUDA 13 runtime (bundle, image or device)"},
    {"name": "libcuda.so.1", "what": "NVIDIA driver API (driver >= 580 for CUDA 13)",
     "provided_by": "the host's NVIDIA driver (containers: --gpus / nvidia-container-toolkit)"},
]


def file_record(path: Path) -> dict:
    return {"sha256": sha256_of(path), "size": path.stat().st_size}


def runtime_libraries(target) -> dict:
    tvm = dist_version("apache-tvm")
    libs = [{"name": "libtvm_ffi.so", "from": f"apache-tvm-ffi=={dist_version('apache-tvm-ffi')} wheel ({target.arch})"},
            {"name": "libtvm_runtime.so", "from": f"apache-tvm=={tvm} wheel ({target.arch})"}]
    system = [{"name": "libstdc++.so.6", "what": "C++ runtime of libtvm_runtime.so",
               "provided_by": "the OS (Amazon Linux 2023, Debian, Ubuntu)"}]
    if target.device == "cuda":
        libs.append({"name": "libtvm_runtime_cuda.so", "from": f"apache-tvm=={tvm} wheel ({target.arch})"})
        system += CUDA_SYSTEM_LIBRARIES
    return {"tvm": libs, "system": system}


def make_manifest(spec, name: str, source: dict, target, target_dir: Path, weights: dict | None, variants: list,
                  *, device_code: dict | None = None) -> Manifest:
    """The manifest of a compiled target directory; every listed file is hashed as it is now.
    `source`: builder.model.source.model_record's {"source", "digest"} (never a path: the
    manifest ships in every bundle). `variants`: runtime.manifest.Variant, the baseline first."""
    libraries = [lib for v in variants for lib in v.libraries]
    shipped = [*(lib.file for lib in libraries), *([weights["file"]] if weights else []), *sorted(spec.files)]
    code = elf.read_elf(target_dir / variants[0].library.file)
    glibc = max((elf.read_elf(target_dir / v.library.file).glibc or () for v in variants), default=None) or None
    return Manifest(
        model=ModelInfo(name=name, source=source["source"], family=spec.family, task=spec.task,
                        architecture=spec.architecture, digest=source["digest"]),
        target=TargetInfo(name=target.name, tvm=variants[0].tvm, arch=target.arch, device=target.device,
                          elf_machine=code.machine_name),
        inputs=tuple(spec.inputs),
        outputs=tuple(spec.outputs),
        variants=tuple(variants),
        weights=WeightsFile.from_json(weights) if weights else None,
        max_batch=MAX_BATCH,
        preprocessing=spec.preprocessing,
        postprocessing=spec.postprocessing,
        labels=tuple(spec.labels) if spec.labels is not None else None,
        glibc_required=elf.vstr(glibc),
        runtime_libraries=runtime_libraries(target),
        versions=Versions(**build_versions()),
        files={fname: file_record(target_dir / fname) for fname in shipped},
        notes=tuple(spec.notes),
        device_code=DeviceCode.from_json(device_code) if device_code else None,
    )


def write_manifest(target_dir: Path, manifest: Manifest) -> Path:
    path = Path(target_dir) / FILENAME
    atomic_write(path, manifest.dumps())
    return path
