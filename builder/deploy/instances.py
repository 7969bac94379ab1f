"""SageMaker instance types a serving image may run on, in one table, and the checks made
against a build before anything is written to AWS: the architecture, the GPU (whether the
build's fatbin serves its compute capability) and the memory.

Sizes follow EC2's naming: `large` is 2 vCPUs, `xlarge` 4, `NxLarge` 4N; a family's memory
is a fixed number of GiB per vCPU. x86 vCPUs are hyperthreads (2 per core); Graviton's are
whole cores.
"""
from __future__ import annotations

import dataclasses
import re

from builder.bundle.sizing import server_memory
from builder.errors import DeployError

GIB = 1024 ** 3
MIB = 1024 ** 2


# SageMaker's default GPU hosts run NVIDIA driver 535/550 (CUDA 12), which cannot load
# libcudart.so.13: endpoints of cuda builds ask for the AMI with driver 580 (CUDA 13.0).
CUDA13_AMI = "al2023-ami-sagemaker-inference-gpu-4-1"


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "8.6"
    memory_gib: int  # per GPU
    counts: dict  # size -> GPUs, where not 1
    ami: str = CUDA13_AMI  # the variant's InferenceAmiVersion


@dataclasses.dataclass(frozen=True)
class Family:
    arch: str  # "x86_64" | "arm64"
    gib_per_vcpu: float
    sizes: tuple  # the sizes SageMaker hosting offers
    gpu: Gpu | None = None
    note: str = ""


_C = ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "18xlarge")
_M = ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge")
_I = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")
_G = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")
_GPU = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")

FAMILIES = {
    "c5": Family("x86_64", 2, _C, note="Skylake/Cascade Lake, AVX-512"),
    "m5": Family("x86_64", 4, _M, note="Skylake/Cascade Lake, AVX-512"),
    "r5": Family("x86_64", 8, _M, note="Skylake/Cascade Lake, AVX-512"),
    "c6i": Family("x86_64", 2, _I, note="Ice Lake, AVX-512 VNNI"),
    "m6i": Family("x86_64", 4, _I, note="Ice Lake, AVX-512 VNNI"),
    "c7i": Family("x86_64", 2, _I, note="Sapphire Rapids, AVX-512 BF16"),
    "m7i": Family("x86_64", 4, _I, note="Sapphire Rapids, AVX-512 BF16"),
    "c6g": Family("arm64", 2, _G, note="Graviton2"),
    "m6g": Family("arm64", 4, _G, note="Graviton2"),
    "c7g": Family("arm64", 2, _G, note="Graviton3, BF16"),
    "m7g": Family("arm64", 4, _G, note="Graviton3, BF16"),
    "r7g": Family("arm64", 8, _G, note="Graviton3, BF16"),
    "g4dn": Family("x86_64", 4, _GPU[:6], Gpu("T4", "7.5", 16, {"12xlarge": 4})),
    "g5": Family("x86_64", 4, _GPU, Gpu("A10G", "8.6", 24, {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8})),
    "g6": Family("x86_64", 4, _GPU, Gpu("L4", "8.9", 24, {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8})),
    "g6e": Family("x86_64", 8, _GPU, Gpu("L40S", "8.9", 48, {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8})),
    "p3": Family("x86_64", 7.625, ("2xlarge", "8xlarge", "16xlarge"),
                 Gpu("V100", "7.0", 16, {"8xlarge": 4, "16xlarge": 8})),
    "p4d": Family("x86_64", 12, ("24xlarge",), Gpu("A100", "8.0", 40, {"24xlarge": 8})),
    "p5": Family("x86_64", 2048 / 192, ("48xlarge",), Gpu("H100", "9.0", 80, {"48xlarge": 8})),
}
# The first type of the ladder that holds the model is the default: compute-optimised
# first (inference is compute-bound), then more memory per vCPU.
DEFAULTS = {"x86_64": ("ml.c5.xlarge", "ml.m5.xlarge", "ml.m5.2xlarge", "ml.m5.4xlarge", "ml.m5.12xlarge",
                       "ml.m5.24xlarge"),
            "arm64": ("ml.c7g.xlarge", "ml.m7g.xlarge", "ml.m7g.2xlarge", "ml.m7g.4xlarge", "ml.m7g.8xlarge",
                      "ml.m7g.16xlarge"),
            "cuda": ("ml.g4dn.xlarge", "ml.g5.xlarge", "ml.g6.xlarge", "ml.g6e.xlarge", "ml.p4d.24xlarge",
                     "ml.p5.48xlarge")}
# What the instance keeps for itself (OS, SageMaker's agents, the container runtime).
RESERVED_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class Instance:
    name: str
    family: Family
    vcpus: int

    @property
    def arch(self) -> str:
        return self.family.arch

    @property
    def gpu(self) -> Gpu | None:
        return self.family.gpu

    @property
    def gpus(self) -> int:
        return self.gpu.counts.get(self.size, 1) if self.gpu else 0

    @property
    def size(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def memory_bytes(self) -> int:
        return int(self.vcpus * self.family.gib_per_vcpu * GIB)

    @property
    def threads(self) -> int:
        """TVM threads: one per core. Two hyperthreads of one x86 core share its vector
        units, so a second thread per core only contends for them; Graviton vCPUs are cores."""
        return self.vcpus if self.arch == "arm64" else max(1, self.vcpus // 2)

    def describe(self) -> str:
        parts = [f"{self.vcpus} vCPU", f"{self.memory_bytes / GIB:.0f} GiB", self.arch]
        if self.gpu:
            parts.insert(0, f"{self.gpus} x {self.gpu.name} (sm_{self.gpu.compute_capability.replace('.', '')}, "
                            f"{self.gpu.memory_gib} GiB)")
        elif self.family.note:
            parts.append(self.family.note)
        return ", ".join(parts)


def _vcpus(size: str) -> int:
    if size == "large":
        return 2
    m = re.fullmatch(r"(\d*)xlarge", size)
    return 4 * int(m.group(1) or 1)


def instance(name: str) -> Instance:
    m = re.fullmatch(r"ml\.([a-z0-9]+)\.([a-z0-9]+)", name or "")
    family = FAMILIES.get(m.group(1)) if m else None
    if family is None or m.group(2) not in family.sizes:
        known = ", ".join(f"ml.{f}.*" for f in FAMILIES)
        raise DeployError(f"--instance-type {name!r} is not a SageMaker hosting type edgebundle knows",
                          hint=f"pass one of {known} (sizes as on the SageMaker pricing page, e.g. ml.c5.xlarge, "
                               "ml.g5.2xlarge)")
    return Instance(name, family, _vcpus(m.group(2)))


def check(inst: Instance, manifest, image_arch: str) -> list[str]:
    """Refuse an instance the build cannot run on; returns the reasons it can, for the plan."""
    target = manifest.target
    where = f"--instance-type {inst.name}"
    if inst.arch != image_arch:
        raise DeployError(f"{inst.name} is {inst.arch} and this image is {image_arch}", where=where,
                          hint=f"pick an {image_arch} type (e.g. {DEFAULTS['arm64' if image_arch == 'arm64' else 'x86_64'][0]}),"
                               " or build the target for this instance's architecture")
    notes = []
    if target.device == "cuda":
        if inst.gpu is None:
            raise DeployError(f"this is a cuda build and {inst.name} has no GPU", where=where,
                              hint="pick a GPU type: ml.g4dn (T4), ml.g5 (A10G), ml.g6 (L4), ml.p4d (A100), "
                                   "ml.p5 (H100); or deploy an x86_64 / arm64 build on a CPU type")
        code = manifest.device_code
        archs = ", ".join([*code.sass, *([code.ptx] if code.ptx else [])]) if code else "none"
        if code is None or not code.serves(inst.gpu.compute_capability):
            raise DeployError(f"{inst.name}'s {inst.gpu.name} is compute capability {inst.gpu.compute_capability}, "
                              f"which this build's fatbin ({archs}) cannot run", where=where,
                              hint=f"rebuild with --cuda-arch sm_{inst.gpu.compute_capability.replace('.', '')} "
                                   "(CUDA 13 runs Turing sm_75 and newer), or pick a GPU the fatbin serves")
        notes.append(f"fatbin {archs} serves the {inst.gpu.name} (compute capability {inst.gpu.compute_capability})")
        weights = sum(rec["size"] for rec in manifest.files.values())
        if weights > inst.gpu.memory_gib * GIB * (1 - RESERVED_FRACTION):
            raise DeployError(f"the model's {weights / GIB:.1f} GiB do not fit {inst.name}'s {inst.gpu.name} "
                              f"({inst.gpu.memory_gib} GiB)", where=where, hint="pick a GPU with more memory")
    elif inst.gpu is not None:
        raise DeployError(f"this is a {target.name} build (CPU code) and {inst.name} is a GPU type: its GPU would "
                          "sit idle", where=where, hint="pick a CPU type, or build --target cuda for the GPU")
    need = server_memory(manifest)
    if need > inst.memory_bytes * (1 - RESERVED_FRACTION):
        raise DeployError(f"the model needs about {need / GIB:.1f} GiB of memory and {inst.name} has "
                          f"{inst.memory_bytes / GIB:.0f} GiB ({RESERVED_FRACTION:.0%} of it kept by the instance)",
                          where=where, hint="pick a larger type (ml.m5 / ml.m7g have 4 GiB per vCPU, ml.r5 / ml.r7g 8)")
    notes.append(f"memory: the model needs ~{need / MIB:.0f} MiB of {inst.memory_bytes / GIB:.0f} GiB")
    return notes


def default_instance(manifest, image_arch: str) -> Instance:
    """The first type of the target's ladder that the build runs on."""
    ladder = DEFAULTS["cuda" if manifest.target.device == "cuda" else image_arch]
    reasons = []
    for name in ladder:
        inst = instance(name)
        try:
            check(inst, manifest, image_arch)
            return inst
        except DeployError as e:
            reasons.append(e.what)
    raise DeployError("no default instance type runs this build: " + "; ".join(reasons),
                      hint="pass --instance-type")
