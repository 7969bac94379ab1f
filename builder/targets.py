"""Target registry: one entry per `--target` choice.

A target fixes everything that depends on the machine the bundle runs on: the TVM target,
the ELF machine every shipped .so must have, the manylinux wheel architecture, the Lambda
architecture and the newest GLIBC symbol version a shipped library may need.
"""
from __future__ import annotations

import dataclasses


# Lambda python3.12+ runs on Amazon Linux 2023 (glibc 2.34); python3.10/3.11 on Amazon
# Linux 2 (glibc 2.26), which is older than libtvm_runtime.so's 2.27.
LAMBDA_GLIBC = {"3.10": "2.26", "3.11": "2.26", "3.12": "2.34", "3.13": "2.34", "3.14": "2.34"}
LAMBDA_DEPLOYABLE_PYTHONS = ("3.12", "3.13", "3.14")
DEFAULT_PYTHON = "3.13"

EM_X86_64 = 62
EM_AARCH64 = 183


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    tvm_target: dict
    arch: str  # `uname -m` of the machine it runs on; also the manylinux wheel suffix
    elf_machine: int
    default_cpu: str | None
    device: str  # "cpu" or "cuda": what the runtime initialises the VM on
    lambda_arch: str | None  # None: Lambda cannot run it
    lambda_refusal: str = ""
    cross_compiler: str | None = None  # None: the host toolchain links it

    def tvm_target_json(self, cpu: str | None = None) -> dict:
        target = dict(self.tvm_target)
        cpu = cpu or self.default_cpu
        if cpu:
            target["mcpu"] = cpu
        return target

    def host_can_run(self) -> bool:
        import platform

        return self.device == "cpu" and platform.machine() == self.arch


TARGETS: dict[str, TargetSpec] = {
    "x86_64": TargetSpec(
        name="x86_64",
        description="x86-64 Linux (AWS Lambda x86_64, containers, edge boxes)",
        # haswell = AVX2/FMA: guaranteed on every Lambda x86_64 host, AVX-512 is not.
        tvm_target={"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
        default_cpu="haswell",
        arch="x86_64",
        elf_machine=EM_X86_64,
        device="cpu",
        lambda_arch="x86_64",
    ),
}
