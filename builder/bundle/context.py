"""Container build contexts (formats lambda-image and serve-image): a folder any engine
builds, with everything the image needs vendored, laid out for layer reuse, and
deterministic (fixed modes and timestamps; the same inputs give the same bytes).

    <context>/Dockerfile     rendered from templates/image/
    <context>/image.json     what `edgebundle image build` and `invoke` read (tag, platform, ...)
    <context>/deps/          vendored wheels (unpacked) + libtvm_ffi.so / libtvm_runtime.so
    <context>/model/         model.json and the files it lists
    <context>/code/          runtime/ (+ the Lambda handler)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from builder import elf
from builder.bundle.archive import tree_files
from builder.bundle.render import render
from builder.bundle.stage import WHEEL_GLIBC, copy_runtime, stage_model, vendor_runtime
from builder.versions import EDGEBUNDLE_VERSION

INFO = "image.json"
# Every file in a context gets this modification time (the engines' --timestamp covers the
# layers; this covers contexts copied or archived by hand).
EPOCH = 315532800  # 1980-01-01, the oldest time a zip can record


def image_name(model_name: str) -> str:
    """A repository name from a model name: lowercase [a-z0-9._-], as OCI references allow."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", model_name.rsplit("/", 1)[-1].lower())
    slug = re.sub(r"[._-]{2,}", "-", slug).strip("-._")  # OCI: one separator between components
    return slug or "model"


def oci_platform(target) -> str:
    return f"linux/{target.platform.deb_arch}"


def _stamp(path: Path) -> None:
    os.chmod(path, 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


def _normalize(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        _stamp(path)
    os.utime(root, (EPOCH, EPOCH))


def context_digest(root: Path, parts=("Dockerfile", "deps", "model", "code")) -> str:
    """sha256 over the names, modes and bytes of what the image is built from."""
    h = hashlib.sha256()
    for part in parts:
        path = root / part
        files = [path] if path.is_file() else tree_files(path)
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(b"x" if os.access(f, os.X_OK) else b"-")
            with open(f, "rb") as src:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def write_context(ctx: Path, target_dir: Path, manifest, target, *, python: str, template: str, title: str,
                  values: dict, code: dict, extra_requirements: tuple = (), info: dict, progress,
                  app_dir: str, model_dir: str) -> dict:
    """Stage and write the build context `ctx` (replaced atomically); returns image.json."""
    ctx.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ctx.name}.", dir=ctx.parent))
    try:
        reqs = vendor_runtime(tmp / "deps", manifest, target, python, progress, WHEEL_GLIBC,
                              extra=tuple(extra_requirements))
        (tmp / "model").mkdir()
        stage_model(target_dir, tmp / "model", manifest)
        copy_runtime(tmp / "code")
        for name, text in code.items():
            (tmp / "code" / name).write_text(text)
        with progress.step("ELF audit"):
            audit = elf.audit_tree(tmp, machine=target.elf_machine, max_glibc=WHEEL_GLIBC, what=f"{ctx} (staged)")
        weights = manifest.files.get(manifest.weights.file) if manifest.weights else None
        labels = {
            "org.opencontainers.image.title": manifest.model.name,
            "org.opencontainers.image.description": f"{manifest.model.task} model served by edgebundle "
                                                    f"({title}, target {target.name})",
            "org.opencontainers.image.version": EDGEBUNDLE_VERSION,
            "org.opencontainers.image.base.name": info["base_image"],
            "io.edgebundle.model": manifest.model.name,
            "io.edgebundle.task": manifest.model.task,
            "io.edgebundle.target": target.name,
            "io.edgebundle.format": info["format"],
            "io.edgebundle.version": EDGEBUNDLE_VERSION,
            "io.edgebundle.python": python,
            "io.edgebundle.weights.sha256": weights["sha256"] if weights else "none",
        }
        (tmp / "Dockerfile").write_text(render(
            template, title=title, model_name=manifest.model.name, task=manifest.model.task, target=target.name,
            edgebundle_version=EDGEBUNDLE_VERSION, platform=oci_platform(target), base_image=info["base_image"],
            labels=labels, app_dir=app_dir + "/", model_dir=model_dir + "/", **values))
        _normalize(tmp)
        digest = context_digest(tmp)
        record = {**info, "model": manifest.model.name, "target": target.name, "platform": oci_platform(target),
                  "python": python, "requirements": reqs, "glibc_required": elf.max_glibc_of(audit),
                  "context_sha256": digest,
                  # Fully qualified as podman stores it: an unqualified edgebundle/NAME would
                  # mean docker.io/edgebundle/NAME to a cluster pulling the YAML's image.
                  "tag": f"localhost/edgebundle/{image_name(manifest.model.name)}:{target.name}-{digest[:12]}",
                  "labels": labels, "edgebundle": EDGEBUNDLE_VERSION}
        (tmp / INFO).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _stamp(tmp / INFO)
        os.utime(tmp, (EPOCH, EPOCH))
        if ctx.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{ctx.name}.old.", dir=ctx.parent))
            os.replace(ctx, old / ctx.name)
            os.replace(tmp, ctx)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, ctx)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def read_info(ctx: Path) -> dict:
    from builder.errors import BundleError

    try:
        return json.loads((Path(ctx) / INFO).read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"not an edgebundle image context ({INFO}: {e})", where=str(ctx),
                          hint="pass OUT/<target>/lambda-image or OUT/<target>/serve-image, written by "
                               "edgebundle build --format lambda-image|serve-image") from None

