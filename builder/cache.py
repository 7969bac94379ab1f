"""Where downloaded and derived artifacts (wheels, sandboxes) live between runs."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EDGEBUNDLE_CACHE`` or ``~/.cache/edgebundle``, created if missing."""
    env = os.environ.get("EDGEBUNDLE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "edgebundle"
    path.mkdir(parents=True, exist_ok=True)
    return path
