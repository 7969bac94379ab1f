"""builder.bundle.wheels against the real PyPI (small packages only)."""
from __future__ import annotations

import io
import zipfile

import pytest

from builder.errors import BundleError
from builder.progress import Progress
from builder.bundle.wheels import (
    canonical_name,
    fetch_wheels,
    manylinux_platforms,
    parse_wheel_filename,
    unpack_wheel,
)


def test_manylinux_platforms_x86_64():
    tags = manylinux_platforms("x86_64", "2.34")
    assert tags[0] == "manylinux_2_34_x86_64"
    assert tags.index("manylinux_2_28_x86_64") < tags.index("manylinux_2_17_x86_64")
    assert "manylinux_2_16_x86_64" not in tags
    for legacy in ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"):
        assert legacy in tags
    assert manylinux_platforms("x86_64", "2.28")[0] == "manylinux_2_28_x86_64"


def test_manylinux_platforms_aarch64():
    tags = manylinux_platforms("arm64", "2.28")
    assert tags == [f"manylinux_2_{n}_aarch64" for n in range(28, 16, -1)] + ["manylinux2014_aarch64"]
    assert manylinux_platforms("aarch64", "2.34") == manylinux_platforms("arm64", "2.34")


@pytest.mark.parametrize("bad", [("riscv64", "2.34"), ("x86_64", "2.5"), ("x86_64", "3.1")])
def test_manylinux_platforms_rejects(bad):
    with pytest.raises(BundleError):
        manylinux_platforms(*bad)


def test_wheel_filename_parsing():
    name = "typing_extensions-4.12.2-py3-none-any.whl"
    assert parse_wheel_filename(name) == ("typing-extensions", "4.12.2")
    assert canonical_name("Snapshot_Restore.Py") == "snapshot-restore-py"
    with pytest.raises(BundleError):
        parse_wheel_filename("numpy-2.4.6.tar.gz")


def test_requirements_must_be_pinned(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBUNDLE_CACHE", str(tmp_path))
    with pytest.raises(BundleError, match="not an exact pin"):
        fetch_wheels(["numpy>=2"], python_version="3.13", platforms=manylinux_platforms("x86_64", "2.34"))


def test_fetch_uses_cache_and_unpacks(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBUNDLE_CACHE", str(tmp_path / "cache"))
    platforms = manylinux_platforms("x86_64", "2.34")
    reqs = ["simplejson==4.3.0", "typing_extensions==4.12.2"]

    log = io.StringIO()
    first = fetch_wheels(reqs, python_version="3.13", platforms=platforms, progress=Progress(stream=log))
    assert [parse_wheel_filename(w) for w in first] == [("simplejson", "4.3.0"), ("typing-extensions", "4.12.2")]
    assert "cp313" in first[0].name and "x86_64" in first[0].name
    assert all(w.parent == tmp_path / "cache" / "wheels" / "3.13-manylinux_2_34_x86_64" for w in first)
    assert log.getvalue().count("==> download") == 2

    # Cached: pip is not run again (no download step), same files untouched. The name is
    # matched normalized, so another spelling of the project hits the cache too.
    mtimes = [w.stat().st_mtime_ns for w in first]
    log2 = io.StringIO()
    second = fetch_wheels(
        ["simplejson==4.3.0", "Typing-Extensions==4.12.2"],
        python_version="3.13", platforms=platforms, progress=Progress(stream=log2),
    )
    assert second == first
    assert [w.stat().st_mtime_ns for w in second] == mtimes
    assert "download" not in log2.getvalue()

    dest = tmp_path / "site"
    written = unpack_wheel(first[0], dest)
    assert "simplejson/__init__.py" in written
    assert any(p.startswith("simplejson-4.3.0.dist-info/") for p in written)
    assert any(p.startswith("simplejson/_speedups.cpython-313-x86_64-linux-gnu") for p in written)
    assert not list(dest.rglob("*.pyc")) and not list(dest.rglob("__pycache__"))
    assert all((dest / p).is_file() for p in written)


def test_pip_failure_names_package_platform_and_python(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBUNDLE_CACHE", str(tmp_path))
    with pytest.raises(BundleError) as exc:
        fetch_wheels(["simplejson==0.0.1"], python_version="3.13", platforms=manylinux_platforms("aarch64", "2.34"))
    msg = str(exc.value)
    assert "simplejson==0.0.1" in msg and "3.13" in msg and "manylinux_2_34_aarch64" in msg
    assert "network" in msg  # the hint
    assert not list((tmp_path / "wheels").rglob("*.whl"))


def test_unpack_wheel_layout(tmp_path):
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("demo/__init__.py", "X = 1\n")
        zf.writestr("demo/__pycache__/__init__.cpython-313.pyc", b"\0")
        zf.writestr("demo/stale.pyc", b"\0")
        zf.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
        zf.writestr("demo-1.0.data/platlib/demo_ext.so", b"\x7fELF")
        zf.writestr("demo-1.0.data/scripts/demo-cli", "#!/bin/sh\n")
        info = zipfile.ZipInfo("demo/tool.sh")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\n")
    written = unpack_wheel(whl, tmp_path / "out")
    assert sorted(written) == ["demo-1.0.dist-info/METADATA", "demo/__init__.py", "demo/tool.sh", "demo_ext.so"]
    assert (tmp_path / "out" / "demo" / "tool.sh").stat().st_mode & 0o111

    evil = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.py", "")
    with pytest.raises(BundleError, match="escapes"):
        unpack_wheel(evil, tmp_path / "out2")
