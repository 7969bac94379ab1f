"""Format `auto`: the Lambda zip when it fits Lambda's limits, the Lambda container image
otherwise (BERT-base with fp32 weights: ~460 MB unzipped; 228 MiB with fp16), saying which
and why."""
from __future__ import annotations

from pathlib import Path

from builder.bundle.formats import lambda_image, lambda_zip
from builder.compiler.targets import TargetSpec
from builder.options import BuildOptions


def precheck(target: TargetSpec, options: BuildOptions) -> None:
    lambda_zip.precheck(target, options, "auto")
    lambda_image.precheck(target, options)


def build(target_dir: Path, target: TargetSpec, options: BuildOptions, progress) -> dict:
    try:
        record = lambda_zip.build(target_dir, target, options, progress)
    except lambda_zip.TooBigForZip as e:
        reason = e.what
        progress.info(f"    auto: lambda-image, because {reason}")
        record = lambda_image.build(target_dir, target, options, progress)
        return {"chosen": "lambda-image", "reason": reason, **record}
    reason = (f"the zip fits Lambda's limits ({record['unzipped_size'] / lambda_zip.MIB:.0f} MiB unzipped of "
              f"{lambda_zip.UNZIPPED_LIMIT / lambda_zip.MIB:.0f})")
    progress.info(f"    auto: lambda, because {reason}")
    return {"chosen": "lambda", "reason": reason, **record}
