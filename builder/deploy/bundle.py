"""What `deploy` puts on AWS, found from what the user points at and checked before any
AWS call: a Lambda zip (OUT/<target>/lambda.zip), a Lambda image (the lambda-image
context and the OCI archive `edgebundle image build` wrote beside it), or a serving image
for a SageMaker endpoint (the serve-image context and its archive)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from builder.bundle.formats.lambda_image import CONTEXT
from builder.bundle.formats.lambda_zip import ARCHITECTURES, DEPLOYABLE_PYTHONS
from builder.bundle.manifest import file_record
from builder.container.images import ARCHIVE_SUFFIX, archive_index, archive_path
from builder.errors import DeployError
from runtime.manifest import FILENAME, Manifest
from runtime.manifest import read as read_manifest

ZIP = "lambda.zip"
TIMING = "timing.json"  # builder.build.TIMING (not imported: that pulls the compiler's registries)


@dataclasses.dataclass(frozen=True)
class Bundle:
    kind: str  # "zip" | "image"
    target_dir: Path
    path: Path  # the zip, or the image's OCI archive
    info: dict  # lambda.json: runtime, handler, architecture, deployable
    manifest: Manifest
    sha256: str  # zip: of its bytes (Lambda's CodeSha256, hex); image: the OCI manifest digest
    size: int  # bytes uploaded: the zip, or the archive
    latency: dict | None  # the build's timing of the model (timing.json), if it ran here
    image: dict | None = None  # image.json of the context

    @property
    def name(self) -> str:
        return self.manifest.model.name

    @property
    def architecture(self) -> str:
        return self.info["architecture"]

    @property
    def runtime(self) -> str:
        return self.info["runtime"]


def _latency(target_dir: Path) -> dict | None:
    try:
        return json.loads((target_dir / TIMING).read_text())
    except (OSError, ValueError):
        return None


def _locate(path: Path, package: str | None) -> tuple[str, Path, Path]:
    """(kind, target_dir, zip or context) from a target dir, a zip, a context or an archive."""
    path = Path(path)
    if path.is_file() and path.suffix == ".zip":
        return "zip", path.parent, path
    if path.name.endswith(ARCHIVE_SUFFIX):
        ctx = path.with_name(path.name[:-len(ARCHIVE_SUFFIX)])
        return "image", ctx.parent, ctx
    if (path / "image.json").is_file():
        return "image", path.parent, path
    if (path / FILENAME).is_file():
        found = {k: p for k, p in (("zip", path / ZIP), ("image", path / CONTEXT)) if p.exists()}
        if package:
            if package not in found:
                raise DeployError(f"no Lambda {package} bundle in {path}", where=str(path),
                                  hint=f"build one: edgebundle build MODEL --format "
                                       f"{'lambda' if package == 'zip' else 'lambda-image'} --out OUT")
            return package, path, found[package]
        if len(found) == 2:
            raise DeployError(f"{path} holds both a Lambda zip and a Lambda image", where=str(path),
                              hint="choose one with --package zip or --package image")
        if found:
            kind, where = next(iter(found.items()))
            return kind, path, where
        target = read_manifest(path).target
        if target.device != "cpu":
            raise DeployError(f"target {target.name} cannot run on AWS Lambda: Lambda has no GPUs", where=str(path),
                              hint="deploy an x86_64 or arm64 build; GPU models ship as serve-image containers")
        raise DeployError("no Lambda bundle in this target directory", where=str(path),
                          hint="build one: edgebundle build MODEL --format lambda (or lambda-image, or auto)")
    if not path.exists():
        raise DeployError("no such bundle", where=str(path),
                          hint="pass OUT/<target>, its lambda.zip, or its lambda-image context")
    raise DeployError("not a Lambda bundle", where=str(path),
                      hint="pass OUT/<target>, its lambda.zip, or its lambda-image context")


def refuse_undeployable(info: dict, manifest: Manifest, where: str) -> None:
    """What the bundle says cannot run on Lambda, refused before any AWS call."""
    if manifest.target.device != "cpu":
        raise DeployError(f"target {manifest.target.name} cannot run on AWS Lambda: Lambda has no GPUs",
                          where=where, hint="deploy an x86_64 or arm64 build")
    if info.get("deployable") is False or info.get("python") not in DEPLOYABLE_PYTHONS:
        reason = info.get("not_deployable_reason") or f"python{info.get('python')} is not a deployable runtime"
        raise DeployError(f"this bundle is marked not deployable to AWS Lambda: {reason}", where=where,
                          hint=f"it is for local tests (edgebundle invoke); rebuild with --python "
                               f"{' or '.join(DEPLOYABLE_PYTHONS)} to deploy")
    if info.get("architecture") not in ARCHITECTURES:
        raise DeployError(f"architecture {info.get('architecture')!r} is not one Lambda runs", where=where,
                          hint=f"Lambda runs {', '.join(ARCHITECTURES)}")


def open_bundle(path: Path, package: str | None = None) -> Bundle:
    kind, target_dir, where = _locate(Path(path), package)
    manifest = read_manifest(target_dir)
    if kind == "zip":
        from builder.local.lambda_runtime import read_lambda_json

        info = read_lambda_json(where)
        if info.get("runtime_layer"):
            raise DeployError("this is the model half of a --runtime-layer split: without its layer it has no "
                              "runtime", where=str(where),
                              hint=f"deploy {target_dir} (or its lambda.zip) with --runtime-layer")
        refuse_undeployable(info, manifest, str(where))
        record = file_record(where)
        return Bundle("zip", target_dir, where, info, manifest, record["sha256"], record["size"],
                      _latency(target_dir))
    from builder.bundle.context import read_info

    image = read_info(where)
    info = image.get("lambda")
    if image.get("format") != CONTEXT or not isinstance(info, dict):
        raise DeployError(f"{where} is a {image.get('format')} context, not a Lambda image", where=str(where),
                          hint="build --format lambda-image for Lambda; serve-image is for servers and clusters")
    refuse_undeployable(info, manifest, str(where))
    archive, digest = _built_archive(where, image)
    return Bundle("image", target_dir, archive, info, manifest, digest, archive.stat().st_size, _latency(target_dir),
                  image=image)


def _built_archive(ctx: Path, image: dict) -> tuple[Path, str]:
    """The OCI archive `edgebundle image build` wrote beside the context, checked to hold
    the context's image; (archive, manifest digest in hex)."""
    archive = archive_path(ctx)
    if not archive.is_file():
        raise DeployError("the image has not been built: no OCI archive beside its context", where=str(archive),
                          hint=f"edgebundle image build {ctx}")
    try:
        index = archive_index(archive)
    except ValueError as e:
        raise DeployError(str(e), where=str(archive), hint="rewrite it with edgebundle image build") from None
    if index["ref"] and index["ref"] != image["tag"] and not image["tag"].endswith(":" + index["ref"]):
        raise DeployError(f"the OCI archive holds {index['ref']}, not the context's {image['tag']}: the context "
                          "changed since the image was built", where=str(archive),
                          hint=f"rebuild it: edgebundle image build {ctx}")
    return archive, index["digest"].split(":", 1)[-1]


@dataclasses.dataclass(frozen=True)
class ServeImage:
    """A serving image for SageMaker: the serve-image context and its built OCI archive."""

    target_dir: Path
    path: Path  # the OCI archive
    image: dict  # image.json of the context
    manifest: Manifest
    sha256: str  # the OCI manifest digest
    size: int
    latency: dict | None  # the build's timing of the model (timing.json), if it ran here

    @property
    def name(self) -> str:
        return self.manifest.model.name

    @property
    def architecture(self) -> str:
        """The image's: x86_64 or arm64, as the instance table names them."""
        return {"linux/amd64": "x86_64", "linux/arm64": "arm64"}.get(self.image.get("platform"), "unknown")


def open_serve_image(path: Path) -> ServeImage:
    """OUT/<target>, its serve-image context or the context's OCI archive."""
    from builder.bundle.context import read_info
    from builder.bundle.formats.serve_image import CONTEXT as SERVE

    path = Path(path)
    if path.name.endswith(ARCHIVE_SUFFIX):
        path = path.with_name(path.name[:-len(ARCHIVE_SUFFIX)])
    ctx = path / SERVE if (path / FILENAME).is_file() else path
    if not (ctx / "image.json").is_file():
        raise DeployError("no serving image here", where=str(path),
                          hint="build one: edgebundle build MODEL --format serve-image --out OUT, then "
                               "edgebundle image build OUT/<target>/serve-image")
    image = read_info(ctx)
    if image.get("format") != SERVE:
        raise DeployError(f"{ctx} is a {image.get('format')} context; SageMaker endpoints run serve-image",
                          where=str(ctx), hint="build --format serve-image and pass its context")
    manifest = read_manifest(ctx.parent)
    archive, digest = _built_archive(ctx, image)
    return ServeImage(ctx.parent, archive, image, manifest, digest, archive.stat().st_size, _latency(ctx.parent))
