"""Bundle format registry: keys are the `--format` choices.

A format is one entry naming the module that implements it; the module is imported when
the format is used (formats pull in jinja2, wheels, archives), so `edgebundle --help`
stays instant. The module provides:

    precheck(target: TargetSpec, options: BuildOptions) -> None
        refuse before anything is compiled (wrong target, Python, platform)
    build(target_dir: Path, target: TargetSpec, options: BuildOptions, progress) -> dict
        write the bundle into target_dir; returns its record for build.json

Everything a destination imposes (Lambda's architectures, glibc and size limits, an image's
base) lives in the format's module, not in the target registry.
"""
from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    name: str
    description: str
    module: str  # the implementation, imported on first use

    @property
    def impl(self):
        return importlib.import_module(self.module)

    def precheck(self, target, options) -> None:
        self.impl.precheck(target, options)

    def build(self, target_dir, target, options, progress) -> dict:
        return self.impl.build(target_dir, target, options, progress)


FORMATS: dict[str, FormatSpec] = {f.name: f for f in (
    FormatSpec("lambda", "AWS Lambda zip (x86_64, arm64)", "builder.bundle.formats.lambda_zip"),
    FormatSpec("lambda-image", "AWS Lambda container image build context (x86_64, arm64; up to 10 GB)",
               "builder.bundle.formats.lambda_image"),
    FormatSpec("serve-image", "model server image build context (SageMaker + KServe v2 + /metrics; any target) "
               "with Kubernetes and KServe YAML", "builder.bundle.formats.serve_image"),
    FormatSpec("auto", "lambda when the zip fits Lambda's limits, lambda-image otherwise",
               "builder.bundle.formats.auto"),
    FormatSpec("edge", "offline install tarball for a device (install.sh, systemd unit, wheelhouse; any target)",
               "builder.bundle.formats.edge"),
)}
