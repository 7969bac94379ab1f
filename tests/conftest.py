"""Session-scoped tiny models and builds: each model is compiled once per test run."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402


def _build(model_dir: Path, out: Path, formats=("lambda",), targets=("x86_64",), progress=None, **options):
    from builder.build import build
    from builder.options import BuildOptions
    from builder.progress import Progress

    options.setdefault("seq_len", 32)
    # Exact kernels: the shared builds compare with PyTorch at 1e-4; fp16 storage (the
    # default) has its own tests (test_storage.py) at its own tolerance.
    options.setdefault("weights", "fp32")
    build(str(model_dir), out, BuildOptions(targets=tuple(targets), formats=tuple(formats), **options),
          progress=progress or Progress(quiet=True))
    return out / targets[0]


def variant_target(variant: str) -> dict:
    """The x86_64 TVM target of a CPU variant (avx2, avx512, avx512-vnni); the test is skipped
    on a CPU that cannot run its code."""
    from builder.compiler.targets import TARGETS
    from runtime import cpu

    lacks = cpu.missing(cpu.KINDS[variant], cpu.features())
    if lacks:
        pytest.skip(f"this CPU lacks {', '.join(lacks)}")
    x86 = TARGETS["x86_64"]
    spec = next(v for v in (*x86.variants(), *x86.variants(quantize="int8"), *x86.variants(compute="bf16"))
                if v.name == variant)
    return x86.tvm_target_json(spec.cpu, (), spec.attrs)


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
def tiny_bert_arm64_build(tiny_bert_dir, tmp_path_factory):
    """OUT/arm64 of the tiny BERT, validated under qemu at build time, with lambda.zip."""
    return _build(tiny_bert_dir, tmp_path_factory.mktemp("out-bert-arm64"), targets=("arm64",))


# The tiny builds loaded through runtime/, once per module (tests may patch the instance).
@pytest.fixture(scope="module")
def bert(tiny_bert_build):
    import runtime

    return runtime.load(tiny_bert_build)


@pytest.fixture(scope="module")
def resnet(tiny_resnet_build):
    import runtime

    return runtime.load(tiny_resnet_build)


@pytest.fixture(scope="session")
def tiny_resnet_multi_build(tiny_resnet_dir, tmp_path_factory):
    """One build of the tiny ResNet for x86_64, arm64 and cuda; returns (OUT, progress log)."""
    import io

    from builder.progress import Progress

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA 13) is not installed: the cuda target cannot be built")
    out, log = tmp_path_factory.mktemp("out-resnet-multi"), io.StringIO()
    _build(tiny_resnet_dir, out, formats=(), targets=("x86_64", "arm64", "cuda"), progress=Progress(stream=log))
    return out, log.getvalue()


@pytest.fixture(scope="session")
def tiny_resnet_basic_dir(tmp_path_factory):
    return tiny_models.make_tiny_resnet_basic(tmp_path_factory.mktemp("tiny-resnet-basic"))


@pytest.fixture(scope="session")
def tiny_distilbert_cls_dir(tmp_path_factory):
    return tiny_models.make_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert-cls"), classifier=True)


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory):
    return tiny_models.make_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_xlm_roberta_dir(tmp_path_factory):
    return tiny_models.make_tiny_xlm_roberta(tmp_path_factory.mktemp("tiny-xlm-roberta"))


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
