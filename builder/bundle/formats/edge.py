"""Format `edge`: OUT/<target>/edge.tar.gz, an offline install for a device (a Raspberry
Pi, a Graviton or x86 mini PC, a Jetson) that has Python and maybe no network or systemd.

    edgebundle-<model>-<target>/
      install.sh, uninstall.sh     POSIX sh (templates/edge/); checks, venv, systemd unit
      README.md                    for the device
      edge.json                    what the tarball holds and needs
      SHA256SUMS                   every other file: install.sh refuses the tarball unless it
                                   holds exactly these files with these sha256, before it
                                   runs anything from it; the build prints (and build.json
                                   keeps, `sha256sums`) the sha256 of SHA256SUMS itself, the
                                   trust root a device compares against
      payload/model/               model.json and its files
      payload/app/                 runtime/ + libtvm_ffi.so, libtvm_runtime.so (runtime/_tvm.py
                                   finds them beside its package)
      payload/wheelhouse/cpXY/     the model server's and preprocessing's wheels (+ pip's own,
                                   which installs them) for each --python, for the target's CPU
      payload/bin/                 edgebundle-serve, edgebundle-run
      payload/systemd/             the unit (@PREFIX@, @USER@ filled in by install.sh)

Deterministic: the same build and options give the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from builder import elf
from builder.bundle import wheels
from builder.bundle.archive import tree_files, write_tar_gz
from builder.bundle.context import context_digest, image_name
from builder.bundle.manifest import file_record
from builder.bundle.render import render
from builder.bundle.stage import WHEEL_GLIBC, copy_runtime, pinned, runtime_requirements, stage_model, tvm_runtime_libs
from builder.compiler.targets import TargetSpec
from builder.errors import BundleError
from builder.options import BuildOptions
from builder.versions import EDGEBUNDLE_VERSION
from runtime.manifest import read as read_manifest

NAME = "edge"
TARBALL = "edge.tar.gz"
# Debian 12 / Raspberry Pi OS bookworm: the most common device Python today.
DEFAULT_PYTHON = "3.11"
# The newest glibc a wheel may need: Ubuntu 22.04 (JetPack 6) has 2.35, Debian 12 2.36.
DEVICE_GLIBC = WHEEL_GLIBC
CUDA_NOTE = ("CUDA code needs the CUDA 13 runtime (libcudart.so.13) and an NVIDIA driver for CUDA 13: on Jetson "
             "that is JetPack 7 or newer (Jetson Thor); JetPack 6 (CUDA 12) cannot run it")


def pythons(options: BuildOptions) -> tuple[str, ...]:
    return options.pythons or ((options.python,) if options.python else (DEFAULT_PYTHON,))


def precheck(target: TargetSpec, options: BuildOptions) -> None:
    for py in pythons(options):
        if not re.fullmatch(r"3\.(9|1[0-9])", py):
            raise BundleError(f"format edge: --python {py} is not a CPython version this runtime supports",
                              hint="give X.Y between 3.9 and 3.19, e.g. --python 3.11 (Debian 12)")


def _wheelhouse(dest: Path, manifest, target: TargetSpec, versions: tuple, progress) -> list[str]:
    """Wheels for every Python into dest/cpXY/; one error naming every missing one."""
    reqs = runtime_requirements(manifest) + [pinned("waitress")]
    platforms = wheels.manylinux_platforms(target.arch, DEVICE_GLIBC)
    missing = []
    for py in versions:
        folder = dest / f"cp{py.replace('.', '')}"
        folder.mkdir(parents=True)
        for req in reqs + [pinned("pip")]:
            try:
                [whl] = wheels.fetch_wheels([req], python_version=py, platforms=platforms, progress=progress)
            except BundleError as e:  # pip's own words say whether it is the network or the wheel
                missing.append(f"{req} (Python {py}, {target.arch}): {e.what.splitlines()[-1].strip()}")
                continue
            shutil.copy2(whl, folder / whl.name)
    if missing:
        raise BundleError("cannot fetch the device's wheels: " + "; ".join(missing),
                          hint="check network access to PyPI; if that works, drop the Pythons they are missing for "
                               f"(--python), or pin versions that publish manylinux wheels for {target.arch}")
    return reqs


def _wheel_glibc(folder: Path) -> tuple[int, int]:
    """The newest glibc any wheel's manylinux tag asks for (its oldest tag is what it needs)."""
    needs = []
    for whl in folder.rglob("*.whl"):
        tags = [(2, int(m.group(1))) for m in re.finditer(r"manylinux_2_(\d+)", whl.name)]
        tags += [(2, 17)] * ("manylinux2014" in whl.name)
        if tags:
            needs.append(min(tags))
    return max(needs, default=(2, 17))


def service_user(slug: str) -> str:
    """The service's user name: shadow-utils before 4.14 (Debian 12, Ubuntu 24.04) refuse
    names over 32 characters; long model names are cut and keep a hash of the whole."""
    name = f"edgebundle-{slug}"
    if len(name) <= 31:
        return name
    return f"eb-{slug[:20].rstrip('-._')}-{hashlib.sha256(slug.encode()).hexdigest()[:6]}"


def payload_id(root: Path) -> str:
    """The version id: the digest of every file's name, mode and bytes (12 hex)."""
    return context_digest(root, parts=tuple(sorted(p.name for p in root.iterdir())))[:12]


def build(target_dir: Path, target: TargetSpec, options: BuildOptions, progress) -> dict:
    precheck(target, options)
    manifest = read_manifest(target_dir)
    versions = pythons(options)
    slug = image_name(manifest.model.name)
    top = f"edgebundle-{slug}-{target.name}"
    out = target_dir / TARBALL
    with tempfile.TemporaryDirectory(prefix="edgebundle-edge-") as tmp:
        root = Path(tmp) / top
        payload = root / "payload"
        (payload / "model").mkdir(parents=True)
        stage_model(target_dir, payload / "model", manifest)
        copy_runtime(payload / "app")
        for name, path in tvm_runtime_libs(target.arch, progress, cuda=target.device == "cuda").items():
            shutil.copy2(path, payload / "app" / name)
        with progress.step(f"wheelhouse for Python {', '.join(versions)} on {target.arch}"):
            reqs = _wheelhouse(payload / "wheelhouse", manifest, target, versions, progress)
        with progress.step("ELF audit"):
            audit = elf.audit_tree(payload / "app", machine=target.elf_machine, max_glibc=DEVICE_GLIBC,
                                   what=f"{out} (staged)")
            audit.update(elf.audit_tree(payload / "model", machine=target.elf_machine, max_glibc=DEVICE_GLIBC,
                                        what=f"{out} (staged)"))
        libs = elf.max_glibc_of(audit)
        glibc = elf.vstr(max(tuple(int(x) for x in libs.split(".")) if libs != "none" else (2, 17),
                             _wheel_glibc(payload / "wheelhouse")))
        system_libs = [lib["name"] for lib in manifest.runtime_libraries.get("system", [])]
        values = {"model_name": manifest.model.name, "slug": slug, "task": manifest.model.task,
                  "target": target.name, "arch": target.arch, "device": target.device, "glibc": glibc,
                  "pythons": list(versions), "requirements": reqs, "system_libs": system_libs,
                  "edgebundle_version": EDGEBUNDLE_VERSION, "cuda_note": CUDA_NOTE,
                  "v2_name": _v2_name(manifest.model.name), "inputs": manifest.inputs,
                  "service_user": service_user(slug)}
        (payload / "bin").mkdir()
        for tool in ("edgebundle-serve", "edgebundle-run"):
            (payload / "bin" / tool).write_text(render(f"edge/{tool}.j2", **values))
            (payload / "bin" / tool).chmod(0o755)
        (payload / "systemd").mkdir()
        (payload / "systemd" / "edgebundle.service").write_text(render("edge/edgebundle.service.j2", **values))
        version_id = payload_id(payload)
        values["version_id"] = version_id
        for script in ("install.sh", "uninstall.sh"):
            (root / script).write_text(render(f"edge/{script}.j2", **values))
            (root / script).chmod(0o755)
        (root / "README.md").write_text(render("edge/README.md.j2", **values))
        info = {"model": manifest.model.name, "task": manifest.model.task, "target": target.name,
                "arch": target.arch, "device": target.device, "glibc_required": glibc, "pythons": list(versions),
                "requirements": reqs, "system_libraries": system_libs, "version_id": version_id,
                "edgebundle": EDGEBUNDLE_VERSION, "top": top}
        (root / "edge.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        sums = [f"{file_record(f)['sha256']}  {f.relative_to(root).as_posix()}" for f in tree_files(root)]
        (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        # SHA256SUMS travels in the tarball, so it vouches for nothing by itself: its own
        # sha256, printed here and kept in build.json, is what install.sh prints on the
        # device for the user to compare.
        sums_sha256 = file_record(root / "SHA256SUMS")["sha256"]
        with progress.step(f"write {out.name}"):
            write_tar_gz(root, out, top)
    record = file_record(out)
    progress.info(f"    {out.name}: {record['size'] / 2 ** 20:.1f} MiB, {target.arch}, Python "
                  f"{' '.join(versions)}, glibc >= {glibc}, version {version_id} (tar xzf {out.name} && sudo sh "
                  f"{top}/install.sh); sha256 of its SHA256SUMS: {sums_sha256}")
    return {"path": out.name, **record, "version_id": version_id, "pythons": list(versions), "glibc_required": glibc,
            "sha256sums": sums_sha256}


def _v2_name(model_name: str) -> str:
    from runtime.server import default_name

    return default_name(model_name)
