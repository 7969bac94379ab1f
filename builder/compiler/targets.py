"""Target registry: one entry per `--target` choice.

A target fixes what the compiled code runs on: the TVM target (and host target for GPUs),
the CPU platform of the host code (ELF machine, wheels, cross compiler: builder/platforms.py)
and the device the runtime initialises. What a destination adds on top (Lambda's
architectures and glibc, an image's base) belongs to the bundle formats, not here.
"""
from __future__ import annotations

import dataclasses
import platform
import shutil

from builder.errors import ToolMissingError, UnsupportedModelError
from builder.compiler.cuda import CUDA_ARCHS, arch_number
from builder.options import DEFAULT_CUDA_ARCHS
from builder.platforms import PLATFORMS, CpuPlatform


# Row reductions (layer norm's sums, softmax's max) run as vector partials instead of one
# serial chain only if LLVM may reorder them: reassoc for sums (BERT-base layer norm 0.121 ->
# 0.041 ms per call), nnan + nsz for max (softmax 0.277 -> 0.083 ms). Results change in the
# last bits (every build is validated against PyTorch); the price: a NaN inside the network
# gives unspecified values, not NaN. Infinities keep their meaning (no ninf: masks use them).
FAST_MATH = {"fast-math-reassoc": True, "fast-math-nnan": True, "fast-math-nsz": True}


def llvm_target(plat: CpuPlatform, cpu: str | None = None, attrs: tuple = ()) -> dict:
    return {"kind": "llvm", "mtriple": plat.gnu_triplet, "mcpu": cpu or plat.default_cpu,
            **({"mattr": list(attrs)} if attrs else {}), **FAST_MATH}


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One compiled variant of a CPU target: `name` is a key of runtime/cpu.py's KINDS (what
    it needs of a CPU), `cpu` the LLVM CPU, `suffix` what its libraries' names carry
    (model.avx512.so; the baseline's are plain model.so)."""

    name: str
    cpu: str
    suffix: str = ""
    attrs: tuple = ()  # LLVM features beyond the CPU's (mattr)
    compute: str = "fp32"  # what its dense layers multiply in: fp32, or bf16 (schedules/bf16.py)

    def library(self, seq: int | None, longest: int | None) -> str:
        stem = "model" if seq in (None, longest) else f"model-seq{seq}"
        return f"{stem}{self.suffix}.so"


# Per platform, the baseline first: it runs on every machine of the platform (Lambda's
# x86_64 hosts all have AVX2; arm64 is Graviton2 / Neoverse N1). An arm64 second variant
# (Graviton3's SVE / bf16) has not been measured to pay for fp32.
PLATFORM_VARIANTS = {
    "x86_64": (VariantSpec("avx2", "haswell"), VariantSpec("avx512", "x86-64-v4", ".avx512")),
    "arm64": (VariantSpec("neoverse-n1", "neoverse-n1"),),
}
# `--quantize int8` builds: the int8 kernels' instructions decide (schedules/int8.py). AVX-512
# without VNNI (Skylake-SP) runs the AVX2 variant; Neoverse N1 has the Armv8.2 dot product.
INT8_VARIANTS = {
    "x86_64": (VariantSpec("avx2", "haswell"),
               VariantSpec("avx512-vnni", "x86-64-v4", ".avx512vnni", ("+avx512vnni",))),
    "arm64": (VariantSpec("neoverse-n1-dotprod", "neoverse-n1"),),
}

# `--compute bf16|auto`: the bf16 dot product. AVX512_BF16: Cooper Lake, Sapphire Rapids and
# later Xeons, Zen 4, Zen 5. Armv8.6 BF16: Graviton3 (Neoverse V1) and later, not Lambda's
# Graviton2; compiled for N1 plus the feature, so nothing else of V1 (SVE) is assumed.
BF16_VARIANTS = {
    "x86_64": VariantSpec("avx512-bf16", "x86-64-v4", ".avx512bf16", ("+avx512bf16",), "bf16"),
    "arm64": VariantSpec("arm64-bf16", "neoverse-n1", ".bf16", ("+bf16",), "bf16"),
}


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    device: str  # "cpu" or "cuda": what the runtime initialises the VM on
    platform: CpuPlatform  # where the host code runs

    @property
    def arch(self) -> str:
        """`uname -m` of machines that run it (x86_64, aarch64)."""
        return self.platform.machine

    @property
    def elf_machine(self) -> int:
        return self.platform.elf_machine

    def tvm_target_json(self, cpu: str | None = None, cuda_archs: tuple = (), attrs: tuple = ()) -> dict:
        """The TVM target. For CUDA its arch is the oldest of `cuda_archs`: TVM generates one
        source for all of them (nvcc then compiles SASS for each), and nothing the oldest GPU
        lacks may be in it."""
        host = llvm_target(self.platform, cpu, attrs)
        if self.device == "cpu":
            return host
        return {"kind": "cuda", "arch": check_cuda_archs(cuda_archs)[0], "host": host}

    def variants(self, cpu: str | None = None, quantize: str = "none", compute: str = "fp32") -> tuple:
        """What to compile: an explicit --cpu is one variant of its own ("cpu", bf16 with
        --compute bf16 or auto); GPU targets compile their host code once, for the baseline."""
        if cpu:
            wanted = "fp32" if compute == "fp32" else "bf16"
            if wanted == "bf16" and not self.has_bf16(cpu):
                if compute == "bf16":
                    raise UnsupportedModelError(f"--compute bf16: the CPU {cpu} has no bfloat16 dot product",
                                                where=f"--cpu {cpu}",
                                                hint="choose a --cpu with AVX512_BF16 (sapphirerapids, znver4) or "
                                                     "BF16 (neoverse-v1), or --compute auto (fp32 where it has none)")
                wanted = "fp32"  # auto: one variant, so the CPU decides
            return (VariantSpec("cpu", cpu, compute=wanted),)
        if self.device != "cpu":
            return PLATFORM_VARIANTS[self.platform.name][:1]
        if quantize == "int8":
            return INT8_VARIANTS[self.platform.name]
        bf16 = BF16_VARIANTS[self.platform.name]
        if compute == "bf16":  # the bundle's only variant: its baseline, plain model.so
            return (dataclasses.replace(bf16, suffix=""),)
        return PLATFORM_VARIANTS[self.platform.name] + ((bf16,) if compute == "auto" else ())

    def has_bf16(self, cpu: str) -> bool:
        """Whether the LLVM CPU has a bfloat16 dot product our bf16 kernels use."""
        import tvm

        from builder.compiler.schedules.bf16 import kernel_kind

        return kernel_kind(tvm.target.Target(self.tvm_target_json(cpu))) is not None

    def host_can_run(self) -> bool:
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
                       "cuda", PLATFORMS["x86_64"]),
}


def check_cuda_archs(archs) -> list[str]:
    """The archs asked for (default: every AWS GPU), oldest first; unknown ones refused."""
    archs = set(archs or DEFAULT_CUDA_ARCHS)
    unknown = sorted(a for a in archs if a not in CUDA_ARCHS)
    if unknown:
        raise UnsupportedModelError(f"--cuda-arch {', '.join(unknown)} is not supported",
                                    hint=f"choose from {', '.join(CUDA_ARCHS)}")
    return sorted(archs, key=arch_number)


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


def cpu_per_target(cpu, resolved: dict) -> dict:
    """`--cpu NAME` (one CPU platform among the targets) or `--cpu TARGET=NAME` (repeatable)."""
    if not cpu:
        return {}
    if isinstance(cpu, str):
        cpu = [cpu]
    out, plain = {}, [c for c in cpu if "=" not in c]
    for item in cpu:
        if "=" in item:
            t, name = item.split("=", 1)
            if t not in resolved:
                raise UnsupportedModelError(f"--cpu {item}: {t} is not among the targets being built",
                                            hint=f"targets: {', '.join(resolved)}")
            out[t] = name
    if plain:
        arches = {r.arch for r in resolved.values()}
        if len(plain) > 1 or len(arches) > 1:
            raise UnsupportedModelError(f"--cpu {plain[0]} is ambiguous with targets of several architectures",
                                        hint="say which target it is for: --cpu arm64=cortex-a72")
        for t in resolved:
            out.setdefault(t, plain[0])
    return out
