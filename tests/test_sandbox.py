"""builder.local.sandbox: an interpreter of the bundle's Python with nothing of the host's."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from builder.errors import BundleError
from builder.local.sandbox import ensure_rootfs, normalize_arch, python_command, suite_for

HOST_PREFIXES = (sys.prefix, sys.base_prefix, "/usr/lib/python3", "/usr/local/lib/python3", "/root/.pyenv")

PROBE = r"""
import json, sys
try:
    import numpy
    numpy_ok = True
except ImportError:
    numpy_ok = False
import ssl, ctypes, sqlite3, zlib, decimal
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "path": sys.path, "prefix": sys.prefix,
                  "numpy": numpy_ok, "flags": [sys.flags.isolated, sys.flags.no_site]}))
"""


def _probe(argv):
    proc = subprocess.run([*argv, "-c", PROBE], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_unsupported_python_names_the_emulated_ones():
    with pytest.raises(BundleError) as exc:
        suite_for("3.12")
    assert "3.11" in str(exc.value) and "3.13" in str(exc.value)
    assert normalize_arch("aarch64") == "arm64" and normalize_arch("amd64") == "x86_64"
    with pytest.raises(BundleError):
        normalize_arch("sparc")


def test_host_python_runs_isolated():
    argv = python_command("%d.%d" % sys.version_info[:2], "x86_64")
    assert argv == [sys.executable, "-I", "-S"]
    info = _probe(argv)
    assert info["flags"] == [1, 1]
    # numpy is installed on the host; -I -S must keep site-packages out.
    assert info["numpy"] is False
    assert not any("site-packages" in p or "dist-packages" in p for p in info["path"])


@pytest.mark.slow
def test_trixie_python_sees_nothing_of_the_host():
    rootfs = ensure_rootfs("3.13", "x86_64")
    argv = python_command("3.13", "x86_64")
    info = _probe(argv)
    assert info["version"] == "3.13"
    assert info["prefix"].startswith(str(rootfs) + "/")
    assert info["path"] and all(p.startswith(str(rootfs) + "/") for p in info["path"])
    assert not any(p.startswith(HOST_PREFIXES) for p in info["path"])
    assert info["numpy"] is False
    # Cached: the second call does not rebuild.
    assert ensure_rootfs("3.13", "x86_64") == rootfs
