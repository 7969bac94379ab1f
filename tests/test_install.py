"""A regular (non-editable) install works: the wheel holds every package of builder/ and
runtime/ and the templates, and an installed edgebundle, run from outside the repository,
builds the tiny BERT into a Lambda zip and invokes it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _packages(root: Path) -> set[str]:
    """Every package of the source tree: folders with an __init__.py under builder/ and runtime/."""
    return {".".join(init.parent.relative_to(root).parts)
            for top in ("builder", "runtime") for init in (root / top).rglob("__init__.py")
            if "__pycache__" not in init.parts}


def _modules(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for top in ("builder", "runtime") for p in (root / top).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_pyproject_lists_every_package():
    """pyproject.toml names the packages (find cannot also map templates/ to
    builder.templates): a new subpackage must be added there, or the wheel lacks it."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    missing = _packages(ROOT) - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert cfg["package-dir"] == {"builder.templates": "templates"}
    gone = listed - _packages(ROOT) - {"builder.templates"}
    assert not gone, f"listed in pyproject.toml but not in the tree: {sorted(gone)}"


def test_templates_found_from_a_checkout(tmp_path):
    """The repository on sys.path, no site-packages (so no editable install): templates/ at
    the top of the checkout. (The editable install is what the other tests import.)"""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from builder.bundle.render import TEMPLATES; "
            "import builder; print(builder.__file__); print(TEMPLATES)")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], cwd=tmp_path, capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    where, templates = proc.stdout.split()
    assert Path(where) == ROOT / "builder" / "__init__.py"
    assert Path(templates) == ROOT / "templates" and (Path(templates) / "lambda" / "handler.py.j2").is_file()

    import builder
    from builder.bundle.render import TEMPLATES

    if Path(builder.__file__).resolve().is_relative_to(ROOT):  # the editable install (or a checkout)
        assert TEMPLATES == ROOT / "templates"


# Written into the test venv's site-packages. The venv sees the system site-packages (torch,
# tvm, ... are reused), which holds the editable install of this repository: a .pth that
# appends a finder to sys.meta_path mapping `builder` / `runtime` (and builder.templates) to
# the repository. It sits after the normal path finder, so the venv's copy wins for everything
# the wheel has, but anything the wheel LACKS would be loaded from the repository silently
# (measured: with builder/options.py deleted from the venv, `import builder.options` came from
# the repository) and the test would pass on an incomplete wheel. A .pth in the venv cannot
# undo it (the venv's .pth files run before the system's); sitecustomize runs after all of
# them, so it takes the finder (and its namespace path hook) out: a module missing from the
# wheel is then an ImportError.
_NO_EDITABLE = '''\
"""tests/test_install.py: no fallback to the editable install of the repository."""
import sys

def _editable(obj):
    return (getattr(obj, "__module__", None) or "").startswith("__editable___edgebundle_")

sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path[:] = [p for p in sys.path if not p.startswith("__editable__.edgebundle-")]
'''

_WHERE = r'''
import importlib.metadata, json, sys
import builder, runtime, sitecustomize
from builder.bundle.render import TEMPLATES
from builder.versions import EDGEBUNDLE_VERSION
print(json.dumps({
    "builder": builder.__file__, "runtime": runtime.__file__, "templates": str(TEMPLATES),
    "sitecustomize": sitecustomize.__file__,
    "dist": str(importlib.metadata.distribution("edgebundle").locate_file("")),
    "dist_version": importlib.metadata.version("edgebundle"), "version": EDGEBUNDLE_VERSION,
    "editable_hooks": [repr(f) for f in sys.meta_path + sys.path_hooks if "editable" in repr(f)],
}))
'''


def _inside(path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _run(cmd, *, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_builds_and_invokes(tiny_bert_dir, tmp_path):
    from builder.versions import EDGEBUNDLE_VERSION

    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not _inside(elsewhere, ROOT)

    # 1. The wheel, built from a copy of the working tree: an in-tree build would write
    # build/ into the repository, and a stale build/lib there ships modules since deleted.
    src = tmp_path / "src"

    def ignore(folder, names):
        top = Path(folder) == ROOT
        return [n for n in names if n in (".git", "__pycache__", ".pytest_cache") or n.endswith(".egg-info")
                or (top and n in ("build", "dist", "out"))]

    shutil.copytree(ROOT, src, ignore=ignore)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src],
         cwd=elsewhere, env=clean)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"edgebundle-{EDGEBUNDLE_VERSION}-py3-none-any.whl"  # version from builder/versions.py
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("builder/compiler/schedules/cpu.py", "runtime/_ffi.py", "builder/templates/lambda/handler.py.j2",
                     "builder/cli.py", "builder/tools/bench.py", "builder/tools/tune.py", "builder/tools/describe.py"):
        assert required in names, required
    assert not _modules(ROOT) - names, f"missing from the wheel: {sorted(_modules(ROOT) - names)}"
    for package in _packages(ROOT):
        assert package.replace(".", "/") + "/__init__.py" in names, package
    templates = {"builder/templates/" + str(p.relative_to(ROOT / "templates"))
                 for p in (ROOT / "templates").rglob("*") if p.is_file()}
    assert templates and not templates - names, f"templates missing from the wheel: {sorted(templates - names)}"
    assert not any(n.startswith(("tests/", "templates/", "examples/")) for n in names)

    # 2. A fresh venv reusing the system's packages (torch, tvm, ...); the wheel installed
    # into it with the system's pip (--ignore-installed: the system's editable edgebundle of
    # the same version is not "already satisfied"; --no-deps --no-index: nothing downloaded).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=elsewhere, env=clean)
    py = venv / "bin" / "python"
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=elsewhere, env=clean).stdout.strip()
    assert _inside(site, venv)
    (Path(site) / "sitecustomize.py").write_text(_NO_EDITABLE)
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel],
         cwd=elsewhere, env=clean)
    env = {**clean, "PATH": f"{venv / 'bin'}{os.pathsep}{clean.get('PATH', '/usr/bin:/bin')}",
           "VIRTUAL_ENV": str(venv)}

    # 3. Python in the venv, outside the repository, imports the installed copy and reads its templates.
    where = json.loads(_run([py, "-c", _WHERE], cwd=elsewhere, env=env).stdout)
    for key in ("builder", "runtime", "templates", "sitecustomize", "dist"):
        assert _inside(where[key], venv) and not _inside(where[key], ROOT), (key, where)
    assert Path(where["templates"]) == Path(where["builder"]).parent / "templates"
    assert (Path(where["templates"]) / "lambda" / "handler.py.j2").is_file()
    assert where["editable_hooks"] == [], where
    assert where["dist_version"] == where["version"] == EDGEBUNDLE_VERSION

    # 4. The installed command: help, build, invoke.
    edgebundle = venv / "bin" / "edgebundle"
    assert "build" in _run([edgebundle, "--help"], cwd=elsewhere, env=env).stdout
    out = tmp_path / "out"
    _run([edgebundle, "build", tiny_bert_dir, "--target", "x86_64", "--format", "lambda", "--out", out,
          "--seq-len", "32", "--quiet"], cwd=elsewhere, env=env, timeout=900)
    zip_path = out / "x86_64" / "lambda.zip"
    assert zip_path.is_file()
    with zipfile.ZipFile(zip_path) as zf:
        assert {"handler.py", "runtime/__init__.py", "runtime/_ffi.py"} <= set(zf.namelist())
    event = elsewhere / "E.json"
    event.write_text(json.dumps({"inputs": "hello world"}))
    proc = _run([edgebundle, "invoke", zip_path, "--event", event], cwd=elsewhere, env=env, timeout=900)
    answers = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(answers) == 1, proc.stdout
    embedding = json.loads(answers[0])
    hidden = json.loads((tiny_bert_dir / "config.json").read_text())["hidden_size"]
    assert isinstance(embedding, list) and len(embedding) == hidden, answers[0][:300]
    assert all(isinstance(x, float) for x in embedding)
    # inspect, from the wheel, reads the manifest the wheel's build wrote (the shared contract).
    described = _run([edgebundle, "inspect", out / "x86_64"], cwd=elsewhere, env=env).stdout
    assert "family bert" in described and "manifest schema" in described and "lambda.zip" in described
