"""Model family registry: keys are the `--family` choices."""
from __future__ import annotations

from pathlib import Path

from builder.errors import UnsupportedModelError
from .base import Family, ModelSpec
from .bert import BertFamily
from .distilbert import DistilBertFamily
from .resnet import ResNetFamily
from .roberta import RobertaFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (BertFamily(), DistilBertFamily(), RobertaFamily(), ResNetFamily())}


def supported_summary() -> str:
    return "; ".join(f"{name}: {', '.join(f.architectures)}" for name, f in FAMILIES.items())


def detect_family(config: dict, model_dir: Path) -> Family:
    for family in FAMILIES.values():
        if family.matches(config):
            return family
    arch = config.get("architectures") or [config.get("model_type", "unknown")]
    raise UnsupportedModelError(
        f"architecture {', '.join(map(str, arch))} is not supported",
        where=str(model_dir / "config.json"),
        hint=f"supported architectures: {supported_summary()} (or force one with --family)",
    )


__all__ = ["FAMILIES", "Family", "ModelSpec", "detect_family", "supported_summary"]
