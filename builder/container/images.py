"""`edgebundle image build CONTEXT`: build an image context (formats lambda-image and
serve-image) with the machine's engine, tag it, and write an OCI archive beside it."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from builder.bundle.context import read_info
from builder.container.engine import find_engine
from builder.errors import BundleError
from builder.progress import QUIET, Progress


ARCHIVE_SUFFIX = ".oci.tar"


def archive_path(ctx: Path) -> Path:
    return ctx.parent / f"{ctx.name}{ARCHIVE_SUFFIX}"


def archive_index(archive: Path) -> dict:
    """The OCI archive's single image, from its index.json: {"digest", "ref"} (ref: the name
    it carries, or None). ValueError naming the cause when unreadable."""
    import json
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            index = json.load(tar.extractfile("index.json"))
        entry = index["manifests"][0]
        return {"digest": entry["digest"],
                "ref": (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name")}
    except (OSError, KeyError, IndexError, TypeError, ValueError, AttributeError, tarfile.TarError) as e:
        raise ValueError(f"not a readable OCI archive ({type(e).__name__}: {e})") from None


def loaded_ref(output: str) -> str | None:
    """The reference `podman load` / `docker load` printed: podman "Loaded image: REF" or
    "Loaded image(s): REF", docker "Loaded image: REF" / "Loaded image ID: ID"."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("Loaded image") and ":" in line:
            return line.split(":", 1)[1].strip().split(",")[0] or None
    return None


def build_image(ctx: Path, engine: str | None = None, tag: str | None = None, archive: bool = True,
                progress: Progress = QUIET) -> dict:
    ctx = Path(ctx)
    info = read_info(ctx)
    tag = tag or info["tag"]
    # The HEALTHCHECK of serving images lives only in Docker's image config format.
    image_format = "docker" if info["format"] == "serve-image" else "oci"
    out = archive_path(ctx)
    elsewhere = [shlex.join(["podman", "build", "--timestamp", "0", "--format", image_format, "--platform",
                             info["platform"], "-t", tag, str(ctx)]),
                 shlex.join(["podman", "save", "--format", "oci-archive", "-o", str(out), tag])]
    eng = find_engine(engine, commands=elsewhere)
    with progress.step(f"{eng.name} build {ctx} ({info['platform']}, on {info['base_image']})"):
        eng.run(eng.build_argv(ctx, tag, info["platform"], image_format), f"building {ctx}")
    layers = eng.layers(tag)
    record = {"tag": tag, "engine": eng.name, "platform": info["platform"], "layers": layers,
              "context_sha256": info["context_sha256"]}
    if archive:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.unlink(missing_ok=True)
        with progress.step(f"write {out.name}"):
            try:
                eng.run(eng.save_argv(tag, tmp), f"saving {tag}")
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
        record["archive"] = str(out)
        record["archive_size"] = out.stat().st_size
    load = {"podman": "podman load -i", "buildah": "podman load -i", "docker": "docker load -i"}[eng.name]
    progress.info(f"    image {tag}: {len(layers)} layers"
                  + (f"; {out} ({record['archive_size'] / 2 ** 20:.0f} MiB; {load} {out}, or skopeo copy "
                     f"oci-archive:{out} docker://REGISTRY/...)" if archive else ""))
    if info["format"] == "lambda-image":
        progress.info(f"    try it: edgebundle invoke {tag} --event EVENT.json")
    else:
        port = info.get("port", 8080)
        progress.info(f"    run it: {eng.name if eng.can_run else 'podman'} run --rm -p 127.0.0.1:{port}:{port} {tag}"
                      f"{' (GPU: --device nvidia.com/gpu=all, or docker --gpus all)' if info.get('gpu') else ''}")
    if not layers:
        raise BundleError(f"{eng.name} built {tag} but reports no layers", where=str(ctx))
    return record
