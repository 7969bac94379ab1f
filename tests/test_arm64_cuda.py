"""arm64 (cross-compiled, run under qemu-aarch64 with QEMU_CPU=neoverse-n1) and cuda
(build only here: nvcc is installed, there is no GPU)."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import reference
from builder import elf
from builder.errors import BundleError
from builder.options import DEFAULT_CUDA_ARCHS, BuildOptions
from builder.progress import Progress
from builder.compiler.targets import FAST_MATH
from builder.compiler.targets import TARGETS
from test_bundles import run_zip

pytestmark = [pytest.mark.slow, pytest.mark.emulated_arm64]
needs_qemu = pytest.mark.skipif(shutil.which("qemu-aarch64") is None, reason="qemu-user is not installed")
needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                                 reason="g++-aarch64-linux-gnu is not installed")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA 13) is not installed")


@pytest.fixture(scope="module")
def resnet_arm64_zip(tiny_resnet_multi_build):
    from builder.bundle.formats.lambda_zip import build as build_lambda

    out, _ = tiny_resnet_multi_build
    build_lambda(out / "arm64", TARGETS["arm64"], BuildOptions(python="3.13"), Progress(quiet=True))
    return out / "arm64" / "lambda.zip"


@needs_cross
@needs_qemu
def test_one_build_many_targets(tiny_resnet_multi_build):
    out, log = tiny_resnet_multi_build
    assert log.count("==> torch.export") == 1 and log.count("==> PyTorch reference") == 1
    record = json.loads((out / "build.json").read_text())
    assert sorted(record["targets"]) == ["arm64", "cuda", "x86_64"]
    for name, machine in (("x86_64", "x86_64"), ("arm64", "aarch64"), ("cuda", "x86_64")):
        m = json.loads((out / name / "model.json").read_text())
        assert m["target"]["name"] == name and m["target"]["elf_machine"] == machine
        assert elf.read_elf(out / name / "model.so").machine_name == machine
    arm = json.loads((out / "arm64" / "model.json").read_text())
    assert arm["target"]["tvm"]["mcpu"] == "neoverse-n1" and arm["target"]["arch"] == "aarch64"
    assert arm["variants"][0]["validation"]["how"].startswith("emulated") and arm["variants"][0]["validation"]["max_abs_diff"]["logits"] < 1e-4


def test_cuda_build_has_device_code_and_accounts_for_runtime_libraries(tiny_resnet_multi_build):
    out, log = tiny_resnet_multi_build
    m = json.loads((out / "cuda" / "model.json").read_text())
    assert m["target"]["device"] == "cuda" and m["target"]["tvm"]["arch"] == "sm_75"
    assert_fatbin(out / "cuda", DEFAULT_CUDA_ARCHS)
    names = [lib["name"] for lib in m["runtime_libraries"]["tvm"] + m["runtime_libraries"]["system"]]
    assert {"libtvm_runtime.so", "libtvm_runtime_cuda.so", "libcudart.so.13", "libcuda.so.1"} <= set(names)
    # The CUDA module is serialised into the library: larger than the CPU build's.
    assert (out / "cuda" / "model.so").stat().st_size > (out / "x86_64" / "model.so").stat().st_size


def test_cuda_runtime_says_clearly_when_there_is_no_gpu(tiny_resnet_multi_build):
    import runtime

    out, log = tiny_resnet_multi_build
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver: see tests/gpu/check.py")
    with pytest.raises(runtime.DeviceUnavailable, match="cuda: .*(driver|device)"):
        runtime.load(out / "cuda")
    assert "cuda: not validated here" in log


_CUDART_PROBE = """
import sys
from pathlib import Path
from runtime import _tvm
from runtime.errors import DeviceUnavailable
try:
    _tvm.load_tvm_runtime(Path(sys.argv[1]), "cuda")
except DeviceUnavailable as e:
    print("unavailable:", e)
print("loaded:", _tvm._loaded.get("libcudart.so.13"))
print("maps:", sorted({line.split()[-1] for line in open("/proc/self/maps") if "libcudart" in line}))
"""


def test_runtime_loads_libcudart_from_the_nvidia_wheel(tmp_path):
    """The serving image's CUDA runtime is NVIDIA's wheel unpacked among the bundle's
    packages: the runtime loads libcudart.so.13 from it before libtvm_runtime_cuda.so (even
    where a toolkit's copy is on the loader's path), and never from a wheel layout planted
    in the working directory."""
    import subprocess
    import sys

    from builder.bundle import wheels
    from builder.bundle.stage import CUDA_RUNTIME_WHEEL, WHEEL_GLIBC

    [whl] = wheels.fetch_wheels([CUDA_RUNTIME_WHEEL], python_version="3.13",
                                platforms=wheels.manylinux_platforms("x86_64", WHEEL_GLIBC))
    deps = tmp_path / "deps"
    wheels.unpack_wheel(whl, deps)
    lib = deps / "nvidia" / "cu13" / "lib" / "libcudart.so.13"
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([sys.executable, "-c", _CUDART_PROBE, str(tmp_path)], capture_output=True, text=True,
                         cwd=root, env={**env, "PYTHONPATH": f"{deps}{os.pathsep}{root}"}, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"loaded: {lib}" in run.stdout and f"maps: [{str(lib)!r}]" in run.stdout, run.stdout
    if not shutil.which("nvidia-smi"):  # no driver here: the error names it, not the CUDA runtime
        assert "unavailable: cuda: the NVIDIA driver library libcuda.so.1" in run.stdout, run.stdout
    # Planted in the working directory ('' on sys.path under python -c): not loaded.
    planted = subprocess.run([sys.executable, "-c", _CUDART_PROBE, str(tmp_path)], capture_output=True, text=True,
                             cwd=deps, env={**env, "PYTHONPATH": str(root)}, timeout=120)
    assert planted.returncode == 0, planted.stderr[-2000:]
    assert "loaded: None" in planted.stdout and str(lib) not in planted.stdout, planted.stdout


@needs_cross
@needs_qemu
def test_arm64_resnet_zip_under_emulation(tiny_resnet_dir, tiny_resnet_multi_build, resnet_arm64_zip):
    import runtime

    out, _ = tiny_resnet_multi_build
    with zipfile.ZipFile(resnet_arm64_zip) as zf:
        info = json.loads(zf.read("lambda.json"))
        names = zf.namelist()
    assert info["architecture"] == "arm64"
    assert any(n.startswith("PIL/_imaging.cpython-313-aarch64") for n in names)
    assert not any(n.startswith("numpy/") for n in names)
    image = reference.png_base64(5)
    pixels = np.asarray(runtime.load(out / "x86_64").encoder([image])["pixel_values"])  # same preprocessing code
    rc, (logits, labels) = run_zip(resnet_arm64_zip, [{"tensors": {"pixel_values": pixels.tolist()}},
                                                      {"inputs": image}])
    ref = reference.resnet_logits(tiny_resnet_dir, pixels)
    assert rc == 0
    np.testing.assert_allclose(np.array(logits["tensors"]["logits"]), ref, atol=1e-4, rtol=0)
    assert labels[0]["label"] == ["cat", "dog", "bird", "fish"][int(np.argmax(ref[0]))]


@needs_cross
@needs_qemu
def test_arm64_bert_zip_under_emulation(tiny_bert_dir, tiny_bert_arm64_build):
    m = json.loads((tiny_bert_arm64_build / "model.json").read_text())
    assert m["variants"][0]["validation"]["how"].startswith("emulated")
    sentences = ["Graviton runs this.", "An emulated arm64 sandbox answers."]
    tensors = reference.tokenize(tiny_bert_arm64_build / "tokenizer.json", sentences)
    rc, (answer, task) = run_zip(tiny_bert_arm64_build / "lambda.zip", [{"tensors": tensors}, {"inputs": sentences}])
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    assert rc == 0
    np.testing.assert_allclose(np.array(answer["tensors"]["sentence_embedding"]), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(task), ref, atol=1e-4, rtol=0)


@needs_cross
def test_elf_audit_rejects_x86_64_library_in_arm64_zip(resnet_arm64_zip, tiny_resnet_multi_build, tmp_path):
    from builder.local.lambda_runtime import invoke_zip

    out, _ = tiny_resnet_multi_build
    tampered = tmp_path / "lambda.zip"
    shutil.copy(resnet_arm64_zip, tampered)
    with zipfile.ZipFile(tampered, "a") as zf:
        zf.write(out / "x86_64" / "model.so", "PIL/_sneaky.cpython-313-aarch64-linux-gnu.so")
    with pytest.raises(BundleError, match="_sneaky.* is x86_64"):
        invoke_zip(tampered, [b'{"inputs": "x"}'], out=io.StringIO(), err=io.StringIO())


@needs_cross
def test_cuda_with_arm64_host_for_jetson(tiny_resnet_dir, tmp_path):
    from builder.build import build

    build(str(tiny_resnet_dir), tmp_path, BuildOptions(targets=("cuda",), host="arm64", cpu=("cortex-a78ae",),
                                                     cuda_archs=("sm_87",)), progress=Progress(quiet=True))
    m = json.loads((tmp_path / "cuda" / "model.json").read_text())
    assert m["target"]["tvm"] == {"kind": "cuda", "arch": "sm_87",
                                  "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae",
                                           **FAST_MATH}}
    assert elf.read_elf(tmp_path / "cuda" / "model.so").machine_name == "aarch64"
    assert_fatbin(tmp_path / "cuda", ("sm_87",))
    assert "skipped" in m["variants"][0]["validation"]


def _cuobjdump() -> str | None:
    """cuobjdump from the CUDA toolkit, or from the nvidia-cuda-cuobjdump wheel (test extra)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")  # the pinned wheel first: it reads CUDA 13 fatbins
    for root in ([] if spec is None else list(spec.submodule_search_locations)):
        for candidate in sorted(Path(root).glob("*/bin/cuobjdump")):
            return str(candidate)
    return shutil.which("cuobjdump")


def assert_fatbin(tdir, archs) -> None:
    """Read from the files: every library's GPU code is a fatbin with SASS for exactly
    `archs` and PTX of the newest, and no CUDA source is left; the manifest says the same."""
    import subprocess
    import tempfile

    from builder.compiler.cuda import device_code_of, library_blob, parse_blob, parse_cuda_module

    m = json.loads((tdir / "model.json").read_text())
    code = m["device_code"]
    newest = sorted(archs, key=lambda a: int(a.split("_")[1]))[-1]
    assert code["format"] == "fatbin" and code["sass"] == list(archs) and code["ptx"] == newest.replace("sm", "compute")
    assert sorted(code["libraries"]) == sorted(lib["file"] for lib in m["variants"][0]["libraries"])
    tool = _cuobjdump()
    for lib in m["variants"][0]["libraries"]:
        (found,) = device_code_of(tdir / lib["file"])  # one cuda module, no source
        assert found["format"] == "fatbin" and found["sass"] == list(archs) and found["ptx"] == code["ptx"]
        assert found["kernels"] == code["libraries"][lib["file"]]["kernels"] > 5
        if tool:  # NVIDIA's own reading of the same bytes
            (payload,) = [p for kind, p in parse_blob(library_blob(tdir / lib["file"]))[2] if kind == "cuda"]
            with tempfile.TemporaryDirectory() as scratch:
                fatbin = Path(scratch) / (lib["file"] + ".fatbin")
                fatbin.write_bytes(parse_cuda_module(payload)[3])
                listed = subprocess.run([tool, "--list-elf", "--list-ptx", str(fatbin)], capture_output=True,
                                        text=True, check=True).stdout
            assert sorted(set(re.findall(r"\.(sm_\d+)\.cubin", listed))) == sorted(archs), listed
            assert re.findall(r"\.(sm_\d+)\.ptx", listed) == [newest], listed


@needs_nvcc
def test_cuda_bert_for_one_arch(tiny_bert_dir, tmp_path):
    """--cuda-arch narrows the fatbin to exactly that arch, for every compiled length."""
    from builder.build import build

    build(str(tiny_bert_dir), tmp_path, BuildOptions(targets=("cuda",), seq_len=32, cuda_archs=("sm_89",)),
          progress=Progress(quiet=True))
    assert_fatbin(tmp_path / "cuda", ("sm_89",))
    m = json.loads((tmp_path / "cuda" / "model.json").read_text())
    assert m["target"]["tvm"]["arch"] == "sm_89" and len(m["variants"][0]["libraries"]) == 2


def test_runtime_refuses_device_code_not_compiled_ahead_of_time(tiny_resnet_multi_build, tmp_path):
    """A cuda model whose GPU code is source (edgebundle < 0.2) is refused from its manifest,
    before the CUDA runtime or any GPU is touched (this machine has neither)."""
    import runtime

    out, _ = tiny_resnet_multi_build
    tdir = tmp_path / "cuda"
    shutil.copytree(out / "cuda", tdir)
    data = json.loads((tdir / "model.json").read_text())
    data["device_code"] = {"kind": "cuda", "kernels": 31, "source_bytes": 2168169}
    (tdir / "model.json").write_text(json.dumps(data))
    with pytest.raises(runtime.ManifestError, match="not compiled ahead of time.*Rebuild"):
        runtime.load(tdir)


def test_runtime_refuses_a_gpu_the_fatbin_cannot_serve(tiny_resnet_multi_build, monkeypatch):
    """On a GPU older than every arch of the fatbin, the error names both (the CUDA runtime and
    the GPU query are stood in for: this machine has no GPU)."""
    import runtime
    import runtime.model

    out, _ = tiny_resnet_multi_build
    monkeypatch.setattr(runtime.model, "load_tvm_runtime", lambda model_dir, device="cpu": None)
    monkeypatch.setattr(runtime.model, "cuda_compute_capability", lambda device_id=0: "7.0")
    with pytest.raises(runtime.DeviceUnavailable) as exc:
        runtime.load(out / "cuda")
    msg = str(exc.value)
    assert "compute capability 7.0" in msg and "sm_75, sm_80, sm_86, sm_89, sm_90" in msg and "compute_90" in msg
    assert "--cuda-arch" in msg
