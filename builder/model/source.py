"""MODEL argument -> a local Hugging Face model directory, and what a build records of it.

A bundle names where its model came from without anything of the build machine in it (no
absolute path, user or cache directory): "hub:ORG/NAME@COMMIT" when it came from the
Hugging Face cache, "local:DIRNAME" otherwise, plus a digest of the files that define the
model (config and weights), so two bundles of the same model say so on any machine and a
user can check a bundle against a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from builder.errors import ModelSourceError
from runtime.integrity import sha256_of

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def hf_cache_dir() -> str:
    """Read at call time: huggingface_hub freezes its own value when first imported."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


def resolve_model(model: str) -> Path:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError("MODEL must be a model directory, not a file", where=str(path),
                                   hint="pass the folder holding config.json and the weights")
        if not (path / "config.json").is_file():
            raise ModelSourceError("no config.json in the model directory", where=str(path),
                                   hint="save the model with save_pretrained(), which writes config.json")
        return path.resolve()
    if not _HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise ModelSourceError("no such model directory", where=model)
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(model, local_files_only=True, cache_dir=hf_cache_dir())
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, ...
        raise ModelSourceError(
            f"{model!r} is neither a local directory nor in the Hugging Face cache ({type(e).__name__})",
            where=model,
            hint="download it once where the hub is reachable (huggingface-cli download "
                 f"{model}) and copy the cache (HF_HOME), or pass a local model directory") from None
    path = Path(local)
    if not (path / "config.json").is_file():
        raise ModelSourceError("the cached snapshot has no config.json", where=str(path))
    return path


# What transformers' from_pretrained loads, in its order of preference: the first present
# is what the build compiled.
WEIGHTS = (("model.safetensors",), ("model.safetensors.index.json",), ("pytorch_model.bin",),
           ("pytorch_model.bin.index.json",))
_COMMIT = re.compile(r"^[0-9a-f]{6,64}$")


def hub_id_of(model_dir: Path) -> tuple[str, str] | None:
    """(hub id, commit) when `model_dir` is a snapshot of the Hugging Face cache
    (<cache>/models--ORG--NAME/snapshots/COMMIT), however it was named on the command line."""
    model_dir = Path(model_dir)
    repo = model_dir.parent.parent.name
    if model_dir.parent.name != "snapshots" or not repo.startswith("models--") or not _COMMIT.match(model_dir.name):
        return None
    parts = repo[len("models--"):].split("--")
    if not all(parts) or len(parts) > 2:
        return None
    return "/".join(parts), model_dir.name


def source_id(model_dir: Path) -> str:
    """model.source of manifests and build.json: "hub:ORG/NAME@COMMIT" or "local:DIRNAME"."""
    hub = hub_id_of(model_dir)
    if hub:
        return f"hub:{hub[0]}@{hub[1]}"
    return f"local:{Path(model_dir).name}"


def default_name(model: str, model_dir: Path) -> str:
    """The model's name when --name is not given: the hub id, else the directory's name."""
    hub = hub_id_of(model_dir)
    if hub:
        return hub[0]
    return model if not Path(model).expanduser().exists() else Path(model_dir).name


def digest_files(model_dir: Path) -> list[str]:
    """config.json and the weights files from_pretrained reads (an index's shards too), as
    paths relative to the model directory."""
    model_dir = Path(model_dir)
    for (name,) in WEIGHTS:
        path = model_dir / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return ["config.json", name]
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelSourceError(f"{name} is not a readable weights index ({type(e).__name__}: {e})",
                                   where=str(path), hint="save the model again with save_pretrained()") from None
        for shard in shards:
            if not isinstance(shard, str) or "/" in shard or shard in ("", ".", ".."):
                raise ModelSourceError(f"{name} names a shard that is not a file beside it: {shard!r}",
                                       where=str(path), hint="save the model again with save_pretrained()")
        return ["config.json", name, *shards]
    return ["config.json"]


def model_digest(model_dir: Path) -> dict:
    """{"sha256", "files"}: sha256 of `sha256sum FILES` output for the files that define the
    model, in that order; `cd MODEL_DIR && sha256sum FILES | sha256sum` gives the same."""
    model_dir = Path(model_dir)
    files = digest_files(model_dir)
    lines = []
    for rel in files:
        try:
            lines.append(f"{sha256_of(model_dir / rel)}  {rel}\n")
        except OSError as e:
            raise ModelSourceError(f"cannot read {rel}: {e.strerror}", where=str(model_dir / rel),
                                   hint="the model directory is incomplete: download or save it again") from None
    return {"sha256": hashlib.sha256("".join(lines).encode()).hexdigest(), "files": files}


def model_record(model_dir: Path) -> dict:
    """What a build records of where the model came from: {"source", "digest"}."""
    return {"source": source_id(model_dir), "digest": model_digest(model_dir)}


def locate(source: str) -> Path | None:
    """The local directory of a recorded hub source ("hub:ORG/NAME@COMMIT"), if that
    snapshot is in this machine's Hugging Face cache; None for other sources."""
    m = re.fullmatch(r"hub:([^@]+)@([0-9a-f]+)", source or "")
    if not m or not _HUB_ID.match(m.group(1)):
        return None
    path = Path(hf_cache_dir()) / f"models--{m.group(1).replace('/', '--')}" / "snapshots" / m.group(2)
    return path if (path / "config.json").is_file() else None
