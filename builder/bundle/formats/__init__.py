"""Bundle format registry: keys are the `--format` choices."""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    name: str
    description: str
    build: Callable  # (target_dir, TargetSpec, options, progress) -> record for build.json
    precheck: Callable  # (TargetSpec, options) -> None; raises before anything is compiled


def _lambda_build(*args, **kwargs):
    from .lambda_zip import build

    return build(*args, **kwargs)


def _lambda_precheck(target, options):
    from .lambda_zip import precheck

    precheck(target, options)


FORMATS: dict[str, FormatSpec] = {
    "lambda": FormatSpec("lambda", "AWS Lambda zip (x86_64, arm64)", _lambda_build, _lambda_precheck),
}
