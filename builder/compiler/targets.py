"""Target registry: one entry per `--target` choice.

A target fixes everything that depends on the machine the bundle runs on: the TVM target
(and host target for GPUs), the ELF machine every shipped .so must have, the manylinux
wheel architecture, the cross compiler, the Lambda architecture and the device the
runtime initialises.
"""
from __future__ import annotations

import dataclasses
import shutil

from builder.errors import ToolMissingError, UnsupportedModelError

# Lambda python3.12+ runs on Amazon Linux 2023 (glibc 2.34); python3.10/3.11 on Amazon
# Linux 2 (glibc 2.26), which is older than libtvm_runtime.so's 2.27.
LAMBDA_GLIBC = {"3.10": "2.26", "3.11": "2.26", "3.12": "2.34", "3.13": "2.34", "3.14": "2.34"}
LAMBDA_DEPLOYABLE_PYTHONS = ("3.12", "3.13", "3.14")
DEFAULT_PYTHON = "3.13"

EM_X86_64 = 62
EM_AARCH64 = 183

# nvcc 13 (the CUDA the wheel's runtime links) dropped sm_70; sm_90a-style variants need
# feature flags TVM's codegen does not set.
CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")
DEFAULT_CUDA_ARCH = "sm_80"


@dataclasses.dataclass(frozen=True)
class CpuPlatform:
    """An instruction set + OS ABI that host code is compiled and linked for."""

    arch: str  # `uname -m`; also the manylinux wheel suffix
    mtriple: str
    default_cpu: str
    elf_machine: int
    lambda_arch: str
    cross_compiler: str | None  # None: the host toolchain links it
    cross_package: str | None = None

    def llvm_target(self, cpu: str | None = None) -> dict:
        # Row reductions (layer norm's sums, softmax's max) run as vector partials instead of
        # one serial chain only if LLVM may reorder them: reassoc for sums (BERT-base layer
        # norm 0.121 -> 0.041 ms per call), nnan + nsz for max (softmax 0.277 -> 0.083 ms).
        # Results change in the last bits (every build is validated against PyTorch); the
        # price: a NaN inside the network gives unspecified values, not NaN. Infinities keep
        # their meaning (no ninf: masks may use them).
        return {"kind": "llvm", "mtriple": self.mtriple, "mcpu": cpu or self.default_cpu,
                **FAST_MATH}


FAST_MATH = {"fast-math-reassoc": True, "fast-math-nnan": True, "fast-math-nsz": True}

PLATFORMS = {
    # haswell = AVX2/FMA: guaranteed on every Lambda x86_64 host, AVX-512 is not.
    "x86_64": CpuPlatform("x86_64", "x86_64-linux-gnu", "haswell", EM_X86_64, "x86_64", None),
    # Graviton2 = Neoverse N1 (ARMv8.2, NEON, no SVE).
    "arm64": CpuPlatform("aarch64", "aarch64-linux-gnu", "neoverse-n1", EM_AARCH64, "arm64",
                         "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
}


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    device: str  # "cpu" or "cuda": what the runtime initialises the VM on
    platform: CpuPlatform  # where the host code runs
    lambda_ok: bool = True
    lambda_refusal: str = ""

    @property
    def arch(self) -> str:
        return self.platform.arch

    @property
    def elf_machine(self) -> int:
        return self.platform.elf_machine

    @property
    def lambda_arch(self) -> str | None:
        return self.platform.lambda_arch if self.lambda_ok else None

    @property
    def cross_compiler(self) -> str | None:
        return self.platform.cross_compiler

    def tvm_target_json(self, cpu: str | None = None, cuda_arch: str | None = None) -> dict:
        host = self.platform.llvm_target(cpu)
        if self.device == "cpu":
            return host
        arch = cuda_arch or DEFAULT_CUDA_ARCH
        if arch not in CUDA_ARCHS:
            raise UnsupportedModelError(f"--cuda-arch {arch} is not supported",
                                        hint=f"choose one of {', '.join(CUDA_ARCHS)}")
        return {"kind": "cuda", "arch": arch, "host": host}

    def host_can_run(self) -> bool:
        import platform

        return self.device == "cpu" and platform.machine() == self.arch

    def check_toolchain(self) -> None:
        cc = self.platform.cross_compiler
        if cc and shutil.which(cc) is None:
            raise ToolMissingError(
                f"target {self.name} needs the cross compiler {cc}, which is not installed",
                hint=f"apt-get install {self.platform.cross_package}")
        if self.device == "cuda" and shutil.which("nvcc") is None:
            raise ToolMissingError("target cuda needs nvcc (the CUDA 13 toolkit) to compile device code",
                                   hint="install the CUDA toolkit (nvcc on PATH); no GPU is needed to build")


TARGETS: dict[str, TargetSpec] = {
    "x86_64": TargetSpec("x86_64", "x86-64 Linux (AWS Lambda x86_64, containers, edge boxes)", "cpu",
                         PLATFORMS["x86_64"]),
    "arm64": TargetSpec("arm64", "ARM64 Linux (AWS Lambda arm64 / Graviton, Raspberry Pi, Jetson CPU)", "cpu",
                        PLATFORMS["arm64"]),
    "cuda": TargetSpec("cuda", "NVIDIA GPU (CUDA 13 runtime), x86_64 host code by default (--host arm64)",
                       "cuda", PLATFORMS["x86_64"], lambda_ok=False,
                       lambda_refusal="AWS Lambda has no GPUs"),
}


def resolve_target(name: str, host: str | None = None) -> TargetSpec:
    """The registry entry, with the host platform swapped for GPU targets (`--host arm64`
    for Jetson-class devices)."""
    if name not in TARGETS:
        raise UnsupportedModelError(f"unknown target {name!r}", hint=f"choose from {', '.join(TARGETS)}")
    target = TARGETS[name]
    if host and host != "x86_64":
        if target.device == "cpu":
            raise UnsupportedModelError(f"--host applies to GPU targets only, not {name}",
                                        hint=f"use --target {host} for CPU code")
        if host not in PLATFORMS:
            raise UnsupportedModelError(f"unknown --host {host!r}", hint=f"choose from {', '.join(PLATFORMS)}")
        target = dataclasses.replace(target, name=name, platform=PLATFORMS[host])
    return target
