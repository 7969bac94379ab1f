"""Third-party packages for a bundle, taken from manylinux wheels for the bundle's platform.

Never from the host's site-packages: the host runs another Python (ABI) and possibly
another architecture, and copying an installed x86 package into an arm64 bundle is the
classic way such bundles break only once deployed.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

from builder.cache import cache_dir
from builder.errors import BundleError, ToolMissingError
from builder.fsutil import unzip
from builder.platforms import platform_named
from builder.progress import QUIET, Progress

_LEGACY_MANYLINUX = {
    # Old names pip only accepts verbatim: manylinux2014 == 2_17, 2010 == 2_12, 1 == 2_5.
    "x86_64": ["manylinux2014", "manylinux_2_12", "manylinux2010", "manylinux_2_5", "manylinux1"],
    "aarch64": ["manylinux2014"],
}


def manylinux_platforms(arch: str, max_glibc: str) -> list[str]:
    """pip ``--platform`` values for every manylinux wheel that runs on glibc ``max_glibc``.

    pip matches a ``--platform`` tag exactly (manylinux_2_28 does not imply 2_17), so all
    compatible tags are listed, newest first. Lambda python3.12+ (Amazon Linux 2023) has
    glibc 2.34, hence the default.
    """
    wheel_arch = platform_named(arch).machine
    m = re.fullmatch(r"2\.(\d+)", max_glibc)
    if not m or int(m.group(1)) < 17:
        raise BundleError(f"unsupported glibc version {max_glibc!r}", hint="give 2.N with N >= 17")
    tags = [f"manylinux_2_{n}_{wheel_arch}" for n in range(int(m.group(1)), 16, -1)]
    return tags + [f"{legacy}_{wheel_arch}" for legacy in _LEGACY_MANYLINUX[wheel_arch]]


def canonical_name(name: str) -> str:
    """PEP 503 normalized project name (``Typing_Extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel_filename(whl: Path | str) -> tuple[str, str]:
    """(canonical project name, version) from a wheel's file name."""
    name = PurePosixPath(str(whl)).name
    parts = name[: -len(".whl")].split("-") if name.endswith(".whl") else []
    if len(parts) not in (5, 6):
        raise BundleError(f"not a wheel file name: {name}", where=str(whl))
    return canonical_name(parts[0]), parts[1]


def _same_version(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return False
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def _parse_pin(req: str) -> tuple[str, str]:
    # Markers and extras mean nothing with --no-deps; anything but an exact pin would make
    # bundles differ from build to build and defeat the cache.
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*===?\s*([^\s;,]+)\s*", req)
    if not m:
        raise BundleError(
            f"requirement {req!r} is not an exact pin",
            where="wheels to vendor",
            hint="pin every vendored package with ==, e.g. numpy==2.4.6",
        )
    return canonical_name(m.group(1)), m.group(2)


def _cached_wheel(directory: Path, name: str, version: str) -> Path | None:
    if not directory.is_dir():
        return None
    for whl in sorted(directory.glob("*.whl")):
        try:
            n, v = parse_wheel_filename(whl)
        except BundleError:
            continue
        if n == name and _same_version(v, version):
            return whl
    return None


def wheels_dir(python_version: str, platforms: list[str]) -> Path:
    return cache_dir() / "wheels" / f"{python_version}-{platforms[0]}"


def fetch_wheels(
    requirements: list[str],
    *,
    python_version: str,
    platforms: list[str],
    progress: Progress = QUIET,
) -> list[Path]:
    """Wheel files for exact pins like ``numpy==2.4.6``, one per requirement, in order.

    Downloaded once per (Python, platform) into the cache; later calls reuse them without
    asking pip (so builds work offline once warm).
    """
    if not platforms:
        raise BundleError("no target platform given for wheels", hint="use manylinux_platforms(arch)")
    dest = wheels_dir(python_version, platforms)
    out: list[Path] = []
    for req in requirements:
        name, version = _parse_pin(req)
        whl = _cached_wheel(dest, name, version)
        if whl is None:
            whl = _download(req, name, version, dest, python_version, platforms, progress)
        out.append(whl)
    return out


def _download(
    req: str, name: str, version: str, dest: Path, python_version: str, platforms: list[str], progress: Progress
) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    # pip writes into a scratch dir first so an interrupted download never leaves a
    # truncated wheel that the cache lookup would later trust.
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as scratch:
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--only-binary=:all:",
            "--implementation", "cp", "--python-version", python_version,
            *[arg for p in platforms for arg in ("--platform", p)],
            "-d", scratch, f"{name}=={version}",
        ]
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        with progress.step(f"download {name}=={version} (Python {python_version}, {platforms[0]})"):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            if "No module named pip" in proc.stderr:
                raise ToolMissingError(
                    f"pip is not available in {sys.executable}",
                    where=f"downloading {req}",
                    hint=f"{sys.executable} -m ensurepip",
                )
            tail = "\n    ".join(proc.stderr.strip().splitlines()[-8:])
            raise BundleError(
                f"pip could not download {req} for Python {python_version} on {platforms[0]}:\n    {tail}",
                where=f"{req} (cp{python_version.replace('.', '')}, {platforms[0]})",
                hint=(
                    "check network access to PyPI; if that works, this version publishes no wheel "
                    f"for CPython {python_version} on {platforms[0]}: pick one that does "
                    f"(https://pypi.org/project/{name}/{version}/#files)"
                ),
            )
        got = _cached_wheel(Path(scratch), name, version)
        if got is None:
            raise BundleError(
                f"pip reported success for {req} but left no matching wheel",
                where=f"{scratch}: {sorted(os.listdir(scratch))}",
                hint="pass the project's exact name and version as on PyPI",
            )
        final = dest / got.name
        os.replace(got, final)
    return final


def unpack_wheel(whl: Path, dest: Path) -> list[str]:
    """Extract a wheel into ``dest`` as an importable tree; returns relative paths written.

    ``.dist-info`` is kept (importlib.metadata needs it); bytecode is dropped (compiled for
    whatever Python built the wheel, and regenerated as needed). ``*.data/purelib|platlib``
    land at the top like pip installs them; scripts, headers and data files are not needed
    to import the package and are left out.
    """
    def importable(rel: PurePosixPath) -> PurePosixPath | None:
        if "__pycache__" in rel.parts or rel.suffix == ".pyc":
            return None
        if rel.parts[0].endswith(".data") and len(rel.parts) > 2:
            return PurePosixPath(*rel.parts[2:]) if rel.parts[1] in ("purelib", "platlib") else None
        return rel

    def failed(msg: str) -> BundleError:
        return BundleError(msg, where=str(whl), hint="delete it from the cache and retry")

    return unzip(whl, dest, error=failed, rename=importable)
