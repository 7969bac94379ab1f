"""The target registry and its checks (fast: nothing is compiled here)."""
from __future__ import annotations

import pytest

from builder.compiler import targets
from builder.errors import BundleError, ToolMissingError, UnsupportedModelError
from builder.bundle.formats import FORMATS
from builder.compiler.targets import FAST_MATH, TARGETS, cpu_per_target, resolve_target


def test_registry_keys_are_the_cli_choices():
    from builder.cli import _parser

    help_text = _parser()._subparsers._group_actions[0].choices["build"].format_help()
    for name in TARGETS:
        assert name in help_text
    assert set(TARGETS) == {"x86_64", "arm64", "cuda"}


def test_tvm_targets():
    assert TARGETS["x86_64"].tvm_target_json() == {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell",
                                                    **FAST_MATH}
    assert TARGETS["arm64"].tvm_target_json() == {"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                                  "mcpu": "neoverse-n1", **FAST_MATH}
    assert TARGETS["arm64"].tvm_target_json("cortex-a72")["mcpu"] == "cortex-a72"
    cuda = TARGETS["cuda"].tvm_target_json(cuda_archs=("sm_89", "sm_86"))
    # One source for every arch of the fatbin: generated for the oldest.
    assert cuda["kind"] == "cuda" and cuda["arch"] == "sm_86" and cuda["host"]["mtriple"] == "x86_64-linux-gnu"
    assert TARGETS["cuda"].tvm_target_json()["arch"] == "sm_75"  # default: every GPU AWS rents, T4 the oldest
    with pytest.raises(UnsupportedModelError, match="sm_70"):
        TARGETS["cuda"].tvm_target_json(cuda_archs=("sm_70",))


def test_cuda_arch_option_is_repeatable_and_takes_lists():
    from builder.cli import _parser, build_options
    from builder.options import DEFAULT_CUDA_ARCHS

    args = _parser().parse_args(["build", "m", "--out", "o", "--target", "cuda",
                                 "--cuda-arch", "sm_80,sm_86", "--cuda-arch", "sm_89"])
    assert build_options(args).cuda_archs == ("sm_80", "sm_86", "sm_89")
    assert build_options(_parser().parse_args(["build", "m", "--out", "o"])).cuda_archs == DEFAULT_CUDA_ARCHS
    assert DEFAULT_CUDA_ARCHS == ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


def test_which_gpus_a_fatbin_serves():
    from runtime.manifest import DeviceCode

    code = DeviceCode("fatbin", ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90"), "compute_90")
    for cc in ("7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "12.0"):  # 10.0+: PTX through the driver's JIT
        assert code.serves(cc), cc
    assert not code.serves("7.0") and not code.serves("6.1")
    one = DeviceCode("fatbin", ("sm_86",), "compute_86")
    assert one.serves("8.6") and one.serves("8.9") and one.serves("9.0")  # 9.0 via PTX
    assert not one.serves("8.0") and not one.serves("7.5")
    assert not DeviceCode("fatbin", ("sm_80",), None).serves("9.0")  # no PTX: no newer major


def test_every_tvm_target_is_accepted_by_tvm():
    import tvm

    for target in TARGETS.values():
        tvm.target.Target(target.tvm_target_json())
    tvm.target.Target(resolve_target("cuda", "arm64").tvm_target_json("cortex-a78ae"))


def test_gpu_host_platform():
    jetson = resolve_target("cuda", "arm64")
    assert jetson.arch == "aarch64" and jetson.elf_machine == 183 and jetson.platform.cross_compiler
    assert jetson.tvm_target_json("cortex-a78ae")["host"]["mcpu"] == "cortex-a78ae"
    with pytest.raises(UnsupportedModelError, match="GPU targets only"):
        resolve_target("x86_64", "arm64")


def test_cpu_option_per_target():
    resolved = {t: TARGETS[t] for t in ("x86_64", "arm64")}
    assert cpu_per_target(["arm64=cortex-a72"], resolved) == {"arm64": "cortex-a72"}
    assert cpu_per_target(["cortex-a72"], {"arm64": TARGETS["arm64"]}) == {"arm64": "cortex-a72"}
    with pytest.raises(UnsupportedModelError, match="ambiguous"):
        cpu_per_target(["cortex-a72"], resolved)


def test_lambda_is_refused_for_cuda_before_compiling():
    from builder.options import BuildOptions

    with pytest.raises(BundleError, match="no GPUs"):
        FORMATS["lambda"].precheck(TARGETS["cuda"], BuildOptions())
    with pytest.raises(BundleError, match="Lambda has no python3.9 runtime"):
        FORMATS["lambda"].precheck(TARGETS["x86_64"], BuildOptions(python="3.9"))
    FORMATS["lambda"].precheck(TARGETS["arm64"], BuildOptions(python="3.12"))


def test_missing_cross_compiler_says_how_to_install(monkeypatch):
    monkeypatch.setattr(targets.shutil, "which", lambda name: None)
    with pytest.raises(ToolMissingError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        TARGETS["arm64"].check_toolchain()
    with pytest.raises(ToolMissingError, match="nvcc"):
        TARGETS["cuda"].check_toolchain()
    TARGETS["x86_64"].check_toolchain()  # the host toolchain


def test_host_is_refused_for_cpu_targets_before_loading_anything(tmp_path):
    """--host picks the host code of GPU targets; for a CPU target it would be ignored, so it
    is an error (before the model is even looked for)."""
    from builder.build import build
    from builder.options import BuildOptions

    with pytest.raises(UnsupportedModelError, match="--host applies to GPU targets only"):
        build(str(tmp_path / "no-such-model"), tmp_path / "out", BuildOptions(targets=("x86_64",), host="arm64"))
