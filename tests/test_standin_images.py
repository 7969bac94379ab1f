"""The stand-in base images' own pieces, without podman: a stale or mismatched stand-in once
hid a broken Lambda image test on every machine that had it cached."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import standin_images


def test_standin_bootstrap_starts_the_runtime_client_with_every_argument(tmp_path):
    """The image's /var/runtime/bootstrap hands awslambdaric the handler, with the task root,
    the layers under /opt and the runtime directory on sys.path in Lambda's order. Run on the
    host with a recording awslambdaric; /var/* paths are redirected by a python3 shim."""
    ric = tmp_path / "runtime"
    (ric / "awslambdaric").mkdir(parents=True)
    (ric / "awslambdaric" / "__init__.py").write_text("")
    (ric / "awslambdaric" / "__main__.py").write_text(
        "import json, sys\n"
        "def main(argv):\n"
        "    print(json.dumps({'argv': argv, 'path': sys.path}))\n")
    shim = tmp_path / "bin" / "python3"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\n"
                    f'for a in "$@"; do set -- "$@" "$(printf %s "$a" | sed "s#^/var/runtime\\$#{ric}#")"; shift; done\n'
                    f'exec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    script = tmp_path / "bootstrap"
    script.write_text(standin_images._bootstrap())
    proc = subprocess.run(["sh", str(script), "app.handler"], capture_output=True, text=True,
                          env={"PATH": f"{shim.parent}:{os.defpath}"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == ["/var/runtime/bootstrap", "app.handler"]
    path = seen["path"]
    assert path[0] == "/var/task"
    assert path[1:3] == ["/opt/python/lib/python%d.%d/site-packages" % sys.version_info[:2], "/opt/python"]
    assert path[-1] == str(ric)


def test_standin_tags_change_with_what_the_image_is_made_from(monkeypatch, tmp_path):
    """A cached stand-in is reused only while everything it is built from is unchanged: the
    bootstrap, the root filesystem's recipe and the runtime client's requirements."""
    from builder.local import lambda_runtime, sandbox

    monkeypatch.setattr(standin_images, "_exists", lambda tag: True)  # nothing is built
    monkeypatch.setattr(sandbox, "rootfs_key", lambda python, arch="x86_64": "rootfs-a")
    first = standin_images.lambda_base("x86_64")
    serve = standin_images.serve_base("x86_64")
    assert standin_images.lambda_base("x86_64") == first
    assert standin_images.lambda_base("arm64") != first

    bootstrap = standin_images._bootstrap
    monkeypatch.setattr(standin_images, "_bootstrap", lambda: bootstrap() + "# changed\n")
    assert standin_images.lambda_base("x86_64") != first
    monkeypatch.setattr(standin_images, "_bootstrap", bootstrap)
    monkeypatch.setattr(lambda_runtime, "AWSLAMBDARIC_REQUIREMENTS", ("awslambdaric==0.0.1",))
    assert standin_images.lambda_base("x86_64") != first
    monkeypatch.undo()
    monkeypatch.setattr(standin_images, "_exists", lambda tag: True)
    monkeypatch.setattr(sandbox, "rootfs_key", lambda python, arch="x86_64": "rootfs-b")
    assert standin_images.lambda_base("x86_64") != first
    assert standin_images.serve_base("x86_64") != serve


def test_rootfs_folder_is_keyed_by_its_recipe(monkeypatch, tmp_path):
    from builder.local import sandbox

    monkeypatch.setenv("EDGEBUNDLE_CACHE", str(tmp_path))
    before = sandbox.rootfs_path("3.13", "arm64")
    assert before != sandbox.rootfs_path("3.13", "x86_64")
    monkeypatch.setattr(sandbox, "_DEBOOTSTRAP_ARGS", (*sandbox._DEBOOTSTRAP_ARGS, "--include=systemd"))
    assert sandbox.rootfs_path("3.13", "arm64") != before
    assert Path(before).parent == tmp_path / "sandbox"
