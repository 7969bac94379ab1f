"""template.yaml: an AWS SAM template beside the Lambda bundles of a target directory
(the zip, the lambda-image context, or both), so SAM users deploy them as they are.
Rendered again by each Lambda format, from the bundles present: one function each."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from builder.bundle.render import render
from builder.fsutil import atomic_write
from builder.versions import EDGEBUNDLE_VERSION

TEMPLATE = "template.yaml"


def _functions(target_dir: Path) -> list[dict]:
    found = []
    zip_path = target_dir / "lambda.zip"
    if zip_path.is_file():
        with zipfile.ZipFile(zip_path) as zf:
            info = json.loads(zf.read("lambda.json"))
        found.append({"kind": "zip", "logical_id": "ModelFunction", "code_uri": zip_path.name,
                      "handler": info["handler"], "runtime": info["runtime"], "architecture": info["architecture"]})
    image_json = target_dir / "lambda-image" / "image.json"
    if image_json.is_file():
        image = json.loads(image_json.read_text())
        found.append({"kind": "image", "logical_id": "ModelImageFunction", "context": "./lambda-image",
                      "architecture": image["lambda"]["architecture"],
                      "docker_tag": image["tag"].rsplit(":", 1)[-1]})
    return found


def write_sam_template(target_dir: Path, manifest) -> Path | None:
    from builder.bundle.sizing import size_function

    functions = _functions(target_dir)
    path = target_dir / TEMPLATE
    if not functions:
        path.unlink(missing_ok=True)
        return None
    # Untimed: the build's latency varies run to run, and the template must not.
    sizing = size_function(manifest, None)
    image = next((f for f in functions if f["kind"] == "image"), None)
    atomic_write(path, render(
        "lambda/template.yaml.j2", model_name=manifest.model.name, task=manifest.model.task,
        target=manifest.target.name, edgebundle_version=EDGEBUNDLE_VERSION, functions=functions, sizing=sizing,
        image=image, description=f"{manifest.model.name} ({manifest.model.task}) compiled by edgebundle "
                                 f"{EDGEBUNDLE_VERSION}"))
    return path
