"""MODEL argument -> a local Hugging Face model directory."""
from __future__ import annotations

import os
import re
from pathlib import Path

from builder.errors import ModelSourceError

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
