"""CPU variants: which of a target's compiled variants this machine runs.

An x86_64 target carries one library per length for AVX2 (every x86 Lambda host has it)
and one for AVX-512 (EC2 Intel hosts, AMD Zen 4 / Zen 5, some Lambda hosts): AWS documents
only "x86-based processors" for Lambda, so the choice is made here, at load, from the
CPU's feature flags, the way ONNX Runtime picks its kernels by CPUID.

The table below is the runtime's own: a manifest that names a variant this runtime does
not know is refused (it could need instructions nobody checks for), and the features a
variant needs are this table's, not whatever a manifest claims. Standard library only.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import platform

from .manifest import ManifestError

FORCE_ENV = "EDGEBUNDLE_CPU_VARIANT"
# Lambda sets this while a SnapStart function initialises for its snapshot. The snapshot is
# restored on whichever host runs the function next, which may lack AVX-512: code chosen for
# the snapshotting host could die there of SIGILL, so a snapshot holds the baseline.
_INIT_TYPE_ENV = "AWS_LAMBDA_INITIALIZATION_TYPE"

# x86-64-v3, as LLVM's `haswell` uses it (the AVX2 build always was).
_X86_V3 = ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe")
# x86-64-v4: AVX-512 F, BW, DQ, VL (Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4, Zen 5).
_X86_V4 = (*_X86_V3, "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")


@dataclasses.dataclass(frozen=True)
class Kind:
    """A variant this runtime knows: the machine it is for, the CPU features its code
    needs (as Linux names them: /proc/cpuinfo flags, HWCAP names on arm64), and its rank
    (higher wins where several can run)."""

    name: str
    arch: str  # `uname -m`
    features: tuple
    rank: int
    description: str


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("avx2", "x86_64", _X86_V3, 10, "x86-64-v3 (AVX2 + FMA), 8-lane tiles: every x86_64 Lambda host"),
    Kind("avx512", "x86_64", _X86_V4, 20, "x86-64-v4 (AVX-512 F/BW/DQ/VL), 16-lane tiles"),
    # int8 builds: vpdpbusd (Ice Lake, Cascade Lake, Sapphire Rapids, Zen 4, Zen 5)
    Kind("avx512-vnni", "x86_64", (*_X86_V4, "avx512_vnni"), 30, "x86-64-v4 with AVX-512 VNNI, int8 dot products"),
    # `--compute bf16|auto`: vdpbf16ps (Cooper Lake, Sapphire Rapids onward, Zen 4, Zen 5)
    Kind("avx512-bf16", "x86_64", (*_X86_V4, "avx512_bf16"), 40,
         "x86-64-v4 with AVX512_BF16, bfloat16 dot products (fp32 accumulation)"),
    # Graviton2 (Neoverse N1) is Lambda's arm64 and the oldest arm64 we build for.
    Kind("neoverse-n1", "aarch64", ("fp", "asimd"), 10, "Armv8.2 (Neoverse N1 / Graviton2) NEON"),
    # int8 builds: their kernels use the Armv8.2 dot product (sdot) explicitly.
    Kind("neoverse-n1-dotprod", "aarch64", ("fp", "asimd", "asimddp"), 10,
         "Armv8.2 with the dot product (Neoverse N1 / Graviton2), int8 dot products"),
    # `--compute bf16|auto`: bfdot (Armv8.6 BF16: Graviton3 / Neoverse V1 onward)
    Kind("arm64-bf16", "aarch64", ("fp", "asimd", "bf16"), 20,
         "Armv8.2 NEON with BF16 (Graviton3 onward), bfloat16 dot products (fp32 accumulation)"),
    # `build --cpu NAME`: the user's own choice of LLVM CPU, one variant, not checked here
    # (as before variants existed): it runs where that CPU's instructions exist.
    Kind("cpu", "", (), 0, "an explicit --cpu choice: its features are not checked at load"),
)}


# Kinds of this rank or lower need nothing beyond their platform's oldest supported CPU
# (x86-64-v3 on x86_64, Neoverse N1 on arm64): the ones to load when features are unknown.
BASELINE_RANK = 10


class VariantError(ManifestError):
    """No variant of the model can run here, a forced one cannot, or the manifest names one
    this runtime does not know. The message says which and what to do (a ManifestError:
    every place that reports a model it cannot load reports this too)."""


# AT_HWCAP bits (arch/arm64/include/uapi/asm/hwcap.h): what the kernel says this core has.
_ARM_HWCAP = {"fp": 0, "asimd": 1, "aes": 3, "pmull": 4, "sha1": 5, "sha2": 6, "crc32": 7, "atomics": 8,
              "fphp": 9, "asimdhp": 10, "asimdrdm": 12, "lrcpc": 15, "asimddp": 20, "sve": 22, "asimdfhm": 23}
_ARM_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14}
_AT_HWCAP, _AT_HWCAP2 = 16, 26


def _cpuinfo_flags(text: str) -> set[str]:
    """The feature words of the first processor in /proc/cpuinfo ("flags" on x86,
    "Features" on arm64)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _hwcap_flags() -> set[str]:
    """arm64: the features from getauxval, which qemu-user sets for the CPU it emulates
    (its /proc/cpuinfo is the host's)."""
    try:
        libc = ctypes.CDLL(None)
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return set()
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    caps, caps2 = getauxval(_AT_HWCAP), getauxval(_AT_HWCAP2)
    return ({n for n, bit in _ARM_HWCAP.items() if caps >> bit & 1}
            | {n for n, bit in _ARM_HWCAP2.items() if caps2 >> bit & 1})


_FEATURES: frozenset | None = None


def features() -> frozenset:
    """This machine's CPU features, read once."""
    global _FEATURES
    if _FEATURES is None:
        found: set[str] = set()
        if platform.machine() in ("aarch64", "arm64"):
            found = _hwcap_flags()
        if not found:
            try:
                with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                    found = _cpuinfo_flags(f.read())
            except OSError:
                found = set()
        _FEATURES = frozenset(found)
    return _FEATURES


def kind_of(name: str, where: str) -> Kind:
    if name not in KINDS:
        raise VariantError(f"{where}: the model has a CPU variant {name!r} this runtime does not know (it knows "
                           f"{', '.join(KINDS)}); run it with the edgebundle runtime that built it, or rebuild it "
                           "with this one")
    return KINDS[name]


@dataclasses.dataclass(frozen=True)
class Choice:
    variant: object  # runtime.manifest.Variant
    reason: str


def missing(kind: Kind, have) -> list[str]:
    return [f for f in kind.features if f not in have]


def choose(variants, have=None, forced: str | None = None, where: str = "model.json") -> Choice:
    """The variant to load among `variants` (runtime.manifest.Variant): the highest-ranked
    one that was validated at build and whose features this CPU has all of. `forced` (or
    EDGEBUNDLE_CPU_VARIANT) names one: taken if the CPU can run it, validated or not."""
    unknown = have is None
    have = features() if have is None else frozenset(have)
    unknown = unknown and not have
    forced = forced if forced is not None else (os.environ.get(FORCE_ENV) or None)
    kinds = [(v, kind_of(v.name, where)) for v in variants]
    if forced is not None:
        match = [(v, k) for v, k in kinds if v.name == forced]
        if not match:
            raise VariantError(f"{FORCE_ENV}={forced}: {where} has no such variant; it has "
                               f"{', '.join(v.name for v in variants)}")
        v, k = match[0]
        lacks = missing(k, have)
        if lacks:
            raise VariantError(f"{FORCE_ENV}={forced}: this CPU lacks {', '.join(lacks)}, which variant {forced} "
                               f"needs; unset {FORCE_ENV} to let the runtime choose")
        how = "forced by " + (FORCE_ENV if forced == os.environ.get(FORCE_ENV) else "the caller")
        return Choice(v, how + ("" if v.validated else " (not validated at build: "
                                                      f"{v.unvalidated})"))
    if unknown and variants:
        # /proc/cpuinfo unreadable (a locked-down sandbox): the baseline is what every build
        # before variants ran, and runs on every host the target supports, unless the build
        # has no such variant (`--compute bf16`: AVX512_BF16 only), which could die of SIGILL.
        if kinds[0][1].rank > BASELINE_RANK:
            raise VariantError(f"{where}: this CPU's features are unknown (/proc/cpuinfo unreadable) and every "
                               f"variant needs more than the platform's baseline ({kinds[0][0].name} needs "
                               f"{', '.join(kinds[0][1].features)}); set {FORCE_ENV}={kinds[0][0].name} where "
                               "the CPU has them, or build with --compute auto")
        return Choice(variants[0], "CPU features unknown (/proc/cpuinfo unreadable): the baseline")
    if os.environ.get(_INIT_TYPE_ENV) == "snap-start" and variants and variants[0].validated \
            and not missing(kinds[0][1], have):
        return Choice(variants[0], f"the baseline: a SnapStart snapshot ({_INIT_TYPE_ENV}=snap-start) may be "
                      "restored on a host with fewer CPU features than this one")
    runnable = [(v, k) for v, k in kinds if not missing(k, have)]
    validated = [(v, k) for v, k in runnable if v.validated]
    if not validated:
        if runnable:
            names = ", ".join(v.name for v, _ in runnable)
            raise VariantError(f"{where}: the variants this CPU can run ({names}) were not validated at build; "
                               f"rebuild on a machine that has them, or force one with {FORCE_ENV}=NAME")
        need = "; ".join(f"{v.name} needs {', '.join(missing(k, have))}" for v, k in kinds)
        raise VariantError(f"{where}: this CPU cannot run any variant of the model ({need}); rebuild for this "
                           "CPU (edgebundle build --cpu ...)")
    best, kind = max(validated, key=lambda vk: vk[1].rank)
    skipped = []
    for v, k in kinds:
        if v is best:
            continue
        if missing(k, have):
            skipped.append(f"{v.name}: CPU lacks {', '.join(missing(k, have))}")
        elif not v.validated:
            skipped.append(f"{v.name}: not validated at build")
        else:
            skipped.append(f"{v.name}: ranked lower")
    reason = ("the only variant" if len(variants) == 1 else
              f"the best this CPU runs ({'; '.join(skipped)})")
    if kind.features:
        reason += f"; needs {', '.join(kind.features)}: present"
    return Choice(best, reason)
