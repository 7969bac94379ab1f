"""`--runtime-layer`: a Lambda zip split in two, deterministically.

    lambda-runtime-layer.zip   python/runtime/, python/libtvm_*.so and the vendored packages:
                               the same for every model of one target and Python, published
                               once as a layer version (named by content) and shared
    lambda-model.zip           handler.py, lambda.json, model.json and the files it lists

Lambda unpacks layers into /opt and puts /opt/python on sys.path, so the handler imports
runtime/ from the layer, and runtime/_tvm.py finds libtvm_*.so beside its package there.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path

from builder.bundle.archive import tree_size, write_zip
from builder.bundle.manifest import file_record
from builder.errors import DeployError
from builder.fsutil import unzip
from runtime.manifest import FILENAME

LAYER_ZIP = "lambda-runtime-layer.zip"
MODEL_ZIP = "lambda-model.zip"
LAYER_ROOT = "python"  # /opt/python is on sys.path in every Lambda Python runtime
MODEL_ONLY = ("handler.py", "lambda.json", FILENAME)


@dataclasses.dataclass(frozen=True)
class Split:
    layer: Path
    model: Path
    layer_sha256: str
    model_sha256: str
    layer_unzipped: int
    model_unzipped: int


def layer_name(python: str, architecture: str) -> str:
    """One layer (with versions by content) per Python and architecture; names allow
    [A-Za-z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"edgebundle-runtime-python{python}-{architecture}")


def split_zip(zip_path: Path, manifest) -> Split:
    """Write LAYER_ZIP and MODEL_ZIP beside zip_path (each replaced atomically)."""
    zip_path = Path(zip_path)
    model_files = set(MODEL_ONLY) | set(manifest.files)
    with tempfile.TemporaryDirectory(prefix="edgebundle-layer-") as tmp:
        whole, layer, model = Path(tmp) / "whole", Path(tmp) / "layer" / LAYER_ROOT, Path(tmp) / "model"
        unzip(zip_path, whole, error=lambda msg: DeployError(msg, where=str(zip_path)))
        for path in sorted(p for p in whole.rglob("*") if p.is_file()):
            rel = path.relative_to(whole)
            dest = (model if rel.as_posix() in model_files else layer) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        info = json.loads((model / "lambda.json").read_text())
        info["runtime_layer"] = LAYER_ZIP
        (model / "lambda.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        out_layer, out_model = zip_path.with_name(LAYER_ZIP), zip_path.with_name(MODEL_ZIP)
        write_zip(layer.parent, out_layer)
        write_zip(model, out_model)
        sizes = tree_size(layer.parent), tree_size(model)
    return Split(out_layer, out_model, file_record(out_layer)["sha256"], file_record(out_model)["sha256"], *sizes)

