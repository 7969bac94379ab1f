"""A build killed at any point leaves the previous OUT/<target> as it was: loadable, its
model.json over its own files, its bundles of the same model."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tiny_models
from builder import fsutil

ROOT = Path(__file__).resolve().parent.parent


# -- the swap ----------------------------------------------------------------------------------
def _tree(path: Path) -> dict:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_staged_directory_replaces_the_old_one_whole(tmp_path):
    dest = tmp_path / "x86_64"
    stage = fsutil.staging_dir(dest)
    (stage / "model.json").write_text("1")
    fsutil.replace_dir(stage, dest)  # no previous one: a rename
    assert _tree(dest) == {"model.json": "1"}
    stage = fsutil.staging_dir(dest)
    assert stage.parent == tmp_path and stage.name.startswith(".x86_64.staging-")
    assert _tree(dest) == {"model.json": "1"}  # untouched while the new one is written
    (stage / "model.json").write_text("2")
    (stage / "model.so").write_text("2")
    fsutil.replace_dir(stage, dest)
    assert _tree(dest) == {"model.json": "2", "model.so": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["x86_64"]
    assert fsutil.staging_dir(dest) != stage  # never a path an earlier build was loaded from


def test_what_a_killed_swap_leaves_is_cleared_by_the_next_build(tmp_path, monkeypatch):
    dest = tmp_path / "x86_64"
    dest.mkdir()
    (dest / "model.json").write_text("old")
    # A build killed while writing: its staging directory is removed, the target kept.
    stage = fsutil.staging_dir(dest)
    (stage / "model.json").write_text("half")
    stage2 = fsutil.staging_dir(dest)
    assert not stage.exists() and _tree(dest) == {"model.json": "old"}
    # Where the kernel cannot exchange two directories: two renames; a kill between them
    # leaves the old one aside, and the next build puts it back before anything else.
    monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    old = tmp_path / ".x86_64.old-1"
    os.rename(dest, old)
    (stage2 / "model.json").write_text("new, not swapped in")
    fsutil.staging_dir(dest)
    assert _tree(dest) == {"model.json": "old"} and not old.exists() and not stage2.exists()
    stage3 = next(tmp_path.glob(".x86_64.staging-*"))
    (stage3 / "model.json").write_text("new")
    fsutil.replace_dir(stage3, dest)
    assert _tree(dest) == {"model.json": "new"} and [p.name for p in tmp_path.iterdir()] == ["x86_64"]


# -- a build killed at each stage ------------------------------------------------------------
_ANSWER = """
import json, sys
from runtime.model import Model
model = Model(sys.argv[1])
print(json.dumps(model.predict(["hello world", "edge bundles"])))
"""

# Progress lines of the second build, each seen with the build at a later stage: compiling
# (the staging directory exists), libraries and model.weights written, model.json written
# and validated, the lambda format writing lambda.zip.
KILL_AT = ["==> compile + link x86_64", "    compile + link x86_64 variant", "==> time x86_64", "==> write lambda.zip"]


def _answers(tdir: Path) -> list:
    """In a new process each time: one that loaded the libraries already would be answered
    by dlopen with those again, whatever is on disk now."""
    proc = subprocess.run([sys.executable, "-c", _ANSWER, str(tdir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _consistent(tdir: Path) -> None:
    """model.json's sha256 and size of every file it lists match the files; the bundle holds
    the same model.json and files."""
    m = json.loads((tdir / "model.json").read_text())
    for name, record in m["files"].items():
        data = (tdir / name).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (record["sha256"], record["size"]), name
    with zipfile.ZipFile(tdir / "lambda.zip") as zf:
        assert zf.read("model.json") == (tdir / "model.json").read_bytes()
        for name in m["files"]:
            assert zf.read(name) == (tdir / name).read_bytes(), name


@pytest.mark.slow
def test_a_build_killed_at_each_stage_leaves_the_previous_target(tiny_bert_build, tmp_path):
    import shutil

    out = tmp_path / "out"
    tdir = out / "x86_64"
    shutil.copytree(tiny_bert_build, tdir)
    before = _answers(tdir)
    other = tiny_models.make_tiny_bert(tmp_path / "other-bert", seed=1)  # other weights: other answers
    cmd = [sys.executable, "-m", "builder.cli", "build", str(other), "--out", str(out), "--target", "x86_64",
           "--format", "lambda", "--seq-len", "32"]
    for marker in KILL_AT:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = []
        try:
            for line in proc.stderr:
                seen.append(line)
                if line.startswith(marker):
                    proc.send_signal(signal.SIGKILL)
                    break
        finally:
            proc.kill()
            proc.wait(60)
        assert proc.returncode == -signal.SIGKILL and seen[-1].startswith(marker), "".join(seen[-20:])
        _consistent(tdir)
        assert _answers(tdir) == before, f"killed at {marker!r}"
    # A build that completes replaces the target whole and clears what the killed ones left.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _consistent(tdir)
    after = _answers(tdir)
    assert after != before and len(after) == len(before)
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "x86_64"]
