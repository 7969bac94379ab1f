"""Session-scoped tiny models and builds: each model is compiled once per test run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402


def _build(model_dir: Path, out: Path, formats=("lambda",), **options):
    from builder.build import build
    from builder.progress import Progress

    opts = {"seq_len": options.pop("seq_len", 32), "python": options.pop("python", "3.13")}
    build(str(model_dir), targets=["x86_64"], formats=list(formats), out=out, options=opts,
          progress=Progress(quiet=True), **options)
    return out / "x86_64"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return tiny_models.make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_cls_dir(tmp_path_factory):
    return tiny_models.make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-cls"), classifier=True)


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory):
    return tiny_models.make_tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="session")
def tiny_bert_build(tiny_bert_dir, tmp_path_factory):
    """OUT/x86_64 of the tiny feature-extraction BERT (seq 32), with lambda.zip."""
    return _build(tiny_bert_dir, tmp_path_factory.mktemp("out-bert"))


@pytest.fixture(scope="session")
def tiny_bert_cls_build(tiny_bert_cls_dir, tmp_path_factory):
    return _build(tiny_bert_cls_dir, tmp_path_factory.mktemp("out-bert-cls"))


@pytest.fixture(scope="session")
def tiny_resnet_build(tiny_resnet_dir, tmp_path_factory):
    return _build(tiny_resnet_dir, tmp_path_factory.mktemp("out-resnet"))


@pytest.fixture(scope="session")
def minilm_build(tmp_path_factory):
    return _build(tiny_models.minilm_dir(), tmp_path_factory.mktemp("out-minilm"), seq_len=128,
                  name="all-MiniLM-L6-v2")


def pytest_configure(config):
    # Markers are also declared in pyproject.toml; repeated here so a bare `pytest tests/x.py`
    # from another directory does not warn.
    for m in ("slow: compiles models or builds sandboxes", "gpu: needs an NVIDIA GPU",
              "emulated_arm64: runs aarch64 code under qemu-user"):
        config.addinivalue_line("markers", m)
