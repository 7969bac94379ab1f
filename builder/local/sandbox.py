"""A Python interpreter of a given version and architecture with nothing from the host in it.

Bundles target Lambda's Python (3.13 by default) while the build host runs whatever it
runs (3.11 here). Importing a bundle with the host interpreter would both use the wrong
ABI for its wheels and silently pick up host packages (numpy, torch) the zip lacks, so
local runs go through a Debian root filesystem whose Python matches the bundle's.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from builder.cache import cache_dir
from builder.errors import BundleError, ToolMissingError
from builder.platforms import host_arch, normalize_arch, platform_named
from builder.progress import QUIET, Progress

# Debian ships exactly one python3 per release; these are the versions we can emulate.
SUITES = {"3.11": "bookworm", "3.13": "trixie"}
# What a root filesystem is made from. Its cache folder is named by a digest of this (and
# of the suite and arch), so changing how it is made builds a new one instead of reusing
# a stale one. Bump _RECIPE when a step below changes in a way the arguments do not show.
_RECIPE = 1
_DEBOOTSTRAP_ARGS = ("--variant=minbase", "--include=python3,libstdc++6")

# A build directory older than this is left over from a killed build, not a running one.
_STALE_BUILD_S = 6 * 3600


def emulator_env(arch: str) -> dict:
    """Environment the emulated process needs on top of its own (Graviton2's CPU for arm64,
    so code using instructions Lambda's arm64 lacks faults here too)."""
    return dict(platform_named(arch).emulator_env)


def emulator(arch: str) -> str | None:
    """The qemu-user binary that runs `arch` code on this host, if installed."""
    name = platform_named(arch).emulator
    return name and (shutil.which(name) or shutil.which(name + "-static"))


def suite_for(python_version: str) -> str:
    try:
        return SUITES[python_version]
    except KeyError:
        raise BundleError(
            f"cannot emulate Python {python_version} locally",
            where="local sandbox (Debian root filesystem)",
            hint="local runs can emulate Python "
            + ", ".join(f"{v} (Debian {s})" for v, s in SUITES.items())
            + "; build the bundle for one of those or run it on AWS",
        ) from None


def _sandbox_root() -> Path:
    root = cache_dir() / "sandbox"
    root.mkdir(parents=True, exist_ok=True)
    return root


def rootfs_key(python_version: str, arch: str = "x86_64") -> str:
    """Digest of everything the root filesystem for this Python and arch is made from."""
    import hashlib
    import json

    arch = normalize_arch(arch)
    recipe = {"recipe": _RECIPE, "suite": suite_for(python_version), "arch": arch,
              "deb_arch": platform_named(arch).deb_arch, "debootstrap": list(_DEBOOTSTRAP_ARGS)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def rootfs_path(python_version: str, arch: str = "x86_64") -> Path:
    """Where the root filesystem for this Python and arch lives (whether or not built)."""
    arch = normalize_arch(arch)
    return _sandbox_root() / f"{suite_for(python_version)}-{arch}-{rootfs_key(python_version, arch)}"


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        with open("/proc/self/mountinfo") as fh:
            return [p for p in (line.split()[4] for line in fh) if p.startswith(prefix)]
    except OSError:
        return []


def _remove_build(path: Path) -> None:
    """Delete a (partial) rootfs, first unmounting what debootstrap may have left mounted.

    In containers debootstrap bind-mounts the host's /dev nodes and mounts /proc and /sys
    into the target; it unmounts them on exit, but a killed one does not, and deleting
    through a mount would reach the host's files.
    """
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if _mounts_under(path):
        return  # still mounted: better left behind than deleted through a mount
    shutil.rmtree(path, ignore_errors=True)


def _sweep_stale_builds(root: Path) -> None:
    now = time.time()
    for d in root.glob(".build-*"):
        try:
            if now - d.stat().st_mtime > _STALE_BUILD_S:
                if d.is_dir():
                    _remove_build(d)
                else:
                    d.unlink()
        except FileNotFoundError:
            pass


def _run_logged(cmd: list[str], log: Path, what: str, hint: str) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise BundleError(
            f"{what} failed (exit {rc}):\n    " + "\n    ".join(tail),
            where=" ".join(cmd),
            hint=hint,
        )


def ensure_rootfs(python_version: str, arch: str = "x86_64", progress: Progress = QUIET) -> Path:
    """A Debian root filesystem holding ``python{python_version}`` for ``arch``; built once.

    The build happens in a scratch directory renamed into place only when complete, so a
    build interrupted at any point is never mistaken for a usable one.
    """
    arch = normalize_arch(arch)
    suite = suite_for(python_version)
    final = rootfs_path(python_version, arch)
    python = final / "usr" / "bin" / f"python{python_version}"
    if python.exists():
        return final

    # Root's PATH has the sbin directories, a user's often not.
    debootstrap = shutil.which("debootstrap", path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))
    if debootstrap is None:
        raise ToolMissingError(
            "debootstrap is not installed",
            where=f"local sandbox for Python {python_version} ({arch})",
            hint="apt-get install debootstrap",
        )
    if os.geteuid() != 0:
        raise ToolMissingError(
            "building the local sandbox needs root (debootstrap creates device nodes and chroots)",
            where=f"local sandbox for Python {python_version} ({arch})",
            hint="run once as root, or set EDGEBUNDLE_CACHE to a cache where the sandbox was already built",
        )
    foreign = arch != host_arch()
    if foreign and shutil.which("dpkg-deb") is None:  # a foreign debootstrap is unpacked by hand
        raise ToolMissingError("dpkg-deb is not installed", where=f"{arch} sandbox", hint="apt-get install dpkg")

    root = _sandbox_root()
    _sweep_stale_builds(root)
    build = Path(tempfile.mkdtemp(prefix=f".build-{suite}-{arch}-", dir=root))
    log = root / f"{build.name}.log"
    hint = (
        "the sandbox is downloaded from deb.debian.org: check network access to it; "
        f"the full log is in {log}"
    )
    try:
        with progress.step(f"create Debian {suite} {arch} sandbox for Python {python_version} (once)"):
            cmd = [debootstrap, *_DEBOOTSTRAP_ARGS, f"--arch={platform_named(arch).deb_arch}"]
            if foreign:
                # A foreign second stage would need the target's binaries to run; instead
                # the packages are only unpacked (no maintainer scripts), which is all a
                # Python interpreter under qemu-user needs.
                cmd.append("--foreign")
            _run_logged(cmd + [suite, str(build)], log, f"debootstrap {suite} ({arch})", hint)
            if foreign:
                debs = sorted((build / "var" / "cache" / "apt" / "archives").glob("*.deb"))
                if not debs:
                    raise BundleError(f"debootstrap --foreign left no packages in {build}", hint=hint)
                for deb in debs:
                    _run_logged(["dpkg-deb", "-x", str(deb), str(build)], log, f"unpacking {deb.name}", hint)
            # The packages are unpacked by now; their archives would only add ~40 MB.
            for deb in (build / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                deb.unlink()
            built_python = build / "usr" / "bin" / f"python{python_version}"
            if not built_python.exists():
                raise BundleError(
                    f"the Debian {suite} sandbox has no python{python_version}",
                    where=str(build),
                    hint=f"Debian {suite} may have moved to another Python; update SUITES in {__name__}",
                )
            if not foreign or emulator(arch):
                _check_isolated(_rootfs_argv(build, python_version, arch), build, arch, log, hint)
            # mkdtemp made it private; the sandboxed process may run as another user.
            os.chmod(build, 0o755)
            try:
                os.rename(build, final)
            except OSError:
                # Another process finished the same sandbox first; theirs is as good as ours.
                if not python.exists():
                    raise
        log.unlink(missing_ok=True)
    finally:
        if build.exists():
            _remove_build(build)
    return final


def python_command(
    python_version: str,
    arch: str = "x86_64",
    progress: Progress = QUIET,
    *,
    library_path: Sequence[str | os.PathLike] = (),
) -> list[str]:
    """argv prefix that runs Python ``python_version`` for ``arch`` isolated (``-I -S``).

    Append ``-c code`` or a script. Every way of starting it (host interpreter, the rootfs's
    own loader, qemu-user) sees the host's file system, so paths pass unchanged. The
    environment is the caller's to set. ``library_path`` lists extra
    directories for shared libraries (Lambda's LD_LIBRARY_PATH has /var/task and
    /var/task/lib): the caller also puts them in LD_LIBRARY_PATH, which the rootfs loader
    ignores in favour of its --library-path, so they are added there too.
    """
    arch = normalize_arch(arch)
    if python_version == "%d.%d" % sys.version_info[:2] and arch == host_arch():
        # -I drops PYTHONPATH, user site and the script's directory; -S drops site-packages.
        return [sys.executable, "-I", "-S"]

    rootfs = ensure_rootfs(python_version, arch, progress)
    return _rootfs_argv(rootfs, python_version, arch, library_path)


def _rootfs_argv(
    rootfs: Path, python_version: str, arch: str, library_path: Sequence[str | os.PathLike] = ()
) -> list[str]:
    python = rootfs / "usr" / "bin" / f"python{python_version}"
    if arch != host_arch():
        qemu = emulator(arch)
        if qemu is None:
            raise ToolMissingError(
                f"{platform_named(arch).emulator} is not installed (needed to run {arch} Python on this "
                f"{host_arch()} host)",
                where=f"local sandbox for Python {python_version} ({arch})",
                hint="apt-get install qemu-user",
            )
        # qemu's -L makes the guest's loader and libraries come from the rootfs while the
        # files the program opens by path stay the host's, like the loader branch below.
        # The guest's loader honours LD_LIBRARY_PATH, so library_path needs nothing here.
        # QEMU_CPU comes from the caller's environment (emulator_env).
        return [qemu, "-L", str(rootfs), str(python), "-I", "-S"]

    # Same arch, other Python: start the rootfs's interpreter through the rootfs's own
    # dynamic loader instead of chroot. Measured: the interpreter derives sys.prefix from
    # argv[0] (<rootfs>/usr/bin/python3.X), so stdlib and lib-dynload come from the rootfs
    # and -I -S leaves no host directory on sys.path; --library-path makes every library
    # (libc included, which trixie needs newer than the host's) come from the rootfs.
    # Unlike chroot it needs no root, no /dev or /proc in the rootfs, and no copying of
    # the task into the rootfs. Its limit: sys.executable cannot be exec'd directly
    # (the host loader would pick the host's older glibc), so a handler that spawns
    # sys.executable fails here although it would work on Lambda.
    if ":" in str(rootfs):
        raise BundleError(
            f"the sandbox path {rootfs} contains ':', which cannot be put in a library path",
            hint="set EDGEBUNDLE_CACHE to a directory without ':'",
        )
    triplet = platform_named(arch).gnu_triplet
    # The rootfs's own libraries first, as Lambda's system directories precede the task's;
    # --library-path replaces LD_LIBRARY_PATH entirely, so library_path must go here.
    libpath = ":".join([f"{rootfs}/usr/lib/{triplet}", f"{rootfs}/lib/{triplet}", *map(str, library_path)])
    return [str(rootfs / platform_named(arch).loader), "--library-path", libpath, str(python), "-I", "-S"]


_ISOLATION_PROBE = """
import sys, json, ssl, ctypes
json.dump({"prefix": sys.prefix, "path": sys.path, "version": "%d.%d" % sys.version_info[:2]}, sys.stdout)
"""


def _check_isolated(argv: list[str], rootfs: Path, arch: str, log: Path, hint: str) -> None:
    """Fail the build if the fresh rootfs's Python would see anything of the host's."""
    import json

    proc = subprocess.run(
        argv + ["-c", _ISOLATION_PROBE],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **emulator_env(arch)},
        cwd="/",
    )
    with open(log, "a") as fh:
        fh.write(f"isolation probe: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        info = None
    root = str(rootfs)
    if proc.returncode != 0 or info is None or not all(p.startswith(root + "/") for p in [info["prefix"], *info["path"]]):
        raise BundleError(
            "the sandbox's Python does not start isolated from the host:\n    "
            + "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:]),
            where=" ".join(argv),
            hint=hint,
        )
