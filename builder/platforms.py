"""CPU platforms: every name one architecture goes by, in one place.

Our names are Lambda's and Debian's ("x86_64", "arm64"); `uname -m`, manylinux wheel tags
and ELF headers call arm64 "aarch64", Debian calls x86_64 "amd64". Everything that maps one
to another (toolchains, wheels, sandboxes, ELF audits, formats) reads it from here.
"""
from __future__ import annotations

import dataclasses
import platform as _platform

from builder.errors import BundleError

EM_X86_64 = 62
EM_AARCH64 = 183


@dataclasses.dataclass(frozen=True)
class CpuPlatform:
    """An instruction set + Linux/glibc ABI that host code is compiled, linked and run for."""

    name: str  # ours = Lambda's architecture name = Debian's for arm64
    machine: str  # `uname -m`; also the manylinux wheel suffix
    deb_arch: str  # Debian's architecture name (debootstrap --arch)
    gnu_triplet: str  # LLVM mtriple; multiarch library directory
    loader: str  # the dynamic loader, relative to a root filesystem
    elf_machine: int  # e_machine of every .so built for it
    default_cpu: str  # LLVM -mcpu when the user names none
    cross_compiler: str | None  # None: the host toolchain links it
    cross_package: str | None = None  # the Debian package that provides cross_compiler
    # Environment qemu-user needs to behave like the platform's reference CPU (Graviton2 for
    # arm64, so code using instructions Lambda's arm64 lacks faults here too).
    emulator_env: tuple = ()
    emulator: str | None = None  # qemu-user binary that runs its code on another host


PLATFORMS: dict[str, CpuPlatform] = {
    # haswell = AVX2/FMA: guaranteed on every Lambda x86_64 host, AVX-512 is not.
    "x86_64": CpuPlatform("x86_64", "x86_64", "amd64", "x86_64-linux-gnu", "lib64/ld-linux-x86-64.so.2",
                          EM_X86_64, "haswell", None, emulator="qemu-x86_64"),
    # Graviton2 = Neoverse N1 (ARMv8.2, NEON, no SVE).
    "arm64": CpuPlatform("arm64", "aarch64", "arm64", "aarch64-linux-gnu", "lib/ld-linux-aarch64.so.1",
                         EM_AARCH64, "neoverse-n1", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu",
                         emulator_env=(("QEMU_CPU", "neoverse-n1"),), emulator="qemu-aarch64"),
}

_ALIASES = {p.name: p.name for p in PLATFORMS.values()} | {p.machine: p.name for p in PLATFORMS.values()} | {
    p.deb_arch: p.name for p in PLATFORMS.values()}


def platform_named(name: str) -> CpuPlatform:
    """The platform for any of its names (x86_64 / amd64, arm64 / aarch64)."""
    try:
        return PLATFORMS[_ALIASES[name]]
    except KeyError:
        raise BundleError(f"unknown architecture {name!r}", hint=f"use one of {', '.join(PLATFORMS)}") from None


def normalize_arch(name: str) -> str:
    """Our name for an architecture given by any of its names."""
    return platform_named(name).name


def host_platform() -> CpuPlatform | None:
    name = _ALIASES.get(_platform.machine())
    return PLATFORMS[name] if name else None


def host_arch() -> str:
    """Our name for this machine's architecture (uname's when we do not know it)."""
    host = host_platform()
    return host.name if host else _platform.machine()
