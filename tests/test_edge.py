"""Format edge: the tarball is deterministic, and install.sh does on a device what it
promises, tested in Debian 12 root filesystems (debootstrap; arm64 through binfmt qemu) run
with chroot, as root, the way a device runs it: install, serve over loopback and
edgebundle-run against PyTorch, upgrade, refusal of a broken tarball while the old version
keeps answering, uninstall that leaves nothing, refusal of the wrong CPU or Python; refusal
of files not as built before anything of the tarball runs; a readiness check that runs
unprivileged, with a token, and that a fake server cannot pass."""
from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

import reference

pytestmark = pytest.mark.slow
SENTENCES = ["an edge device on a shelf", "no network, maybe no systemd"]
SLUG_PREFIX = "/opt/edgebundle"
SHADOW_BACKUPS = ("etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/.pwd.lock")


def _need_chroot():
    if os.geteuid() != 0 or shutil.which("chroot") is None or shutil.which("debootstrap", path=os.environ.get(
            "PATH", "") + ":/usr/sbin:/sbin") is None:
        pytest.skip("needs root, chroot and debootstrap (examples/setup.sh installs them)")


def _build_edge(target_dir: Path, target: str, dest: Path, **options) -> Path:
    from builder.bundle.formats import FORMATS
    from builder.compiler.targets import resolve_target
    from builder.options import BuildOptions
    from builder.progress import Progress

    FORMATS["edge"].build(target_dir, resolve_target(target), BuildOptions(formats=("edge",), **options),
                          Progress(quiet=True))
    shutil.copy2(target_dir / "edge.tar.gz", dest)
    return dest


def _repack(src: Path, dest: Path, change) -> Path:
    """A copy of a tarball with change(name, bytes) -> bytes applied to its files."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read() if member.isfile() else None
            if data is not None:
                data = change(member.name, data)
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def _rebuilt(src: Path, dest: Path, change) -> Path:
    """A copy of a tarball with change(name, bytes) -> bytes applied to its files and its
    SHA256SUMS made to match: a tarball only the trust root (or the readiness check) can tell
    from a real build."""
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    files = {m.name: change(m.name, data) for m, data in members if data is not None}
    sums_name = next(name for name in files if name.endswith("/SHA256SUMS"))
    lines = []
    for line in files[sums_name].decode().splitlines():
        digest, path = line.split("  ", 1)
        lines.append(f"{hashlib.sha256(files[sums_name.rsplit('/', 1)[0] + '/' + path]).hexdigest()}  {path}")
    files[sums_name] = ("\n".join(lines) + "\n").encode()
    with tarfile.open(dest, "w:gz") as out:
        for member, data in members:
            if data is not None:
                member.size = len(files[member.name])
            out.addfile(member, io.BytesIO(files[member.name]) if data is not None else None)
    return dest


# Appended to the runtime package of the "held" tarball: its server waits, before it
# listens, while /edge-hold-start exists, and before it loads the model (so: listening, not
# ready) while /edge-hold-load exists; the test decides when each happens.
HOLD = """
import os as _os, time as _time


def _edge_test_hold(path):
    deadline = _time.monotonic() + 600
    while _os.path.exists(path) and _time.monotonic() < deadline:
        _time.sleep(0.05)


_edge_test_hold("/edge-hold-start")
_edge_test_model_init = Model.__init__


def _edge_test_held_init(self, *args, **kwargs):
    _edge_test_hold("/edge-hold-load")
    _edge_test_model_init(self, *args, **kwargs)


Model.__init__ = _edge_test_held_init
"""


@pytest.fixture(scope="module")
def x86_tarballs(tiny_bert_build, tmp_path_factory):
    """A: Python 3.11; B: the same model rebuilt for 3.11 + 3.12 (a new version id);
    corrupt: B with a damaged weights file; unready: B with truncated weights and its
    SHA256SUMS made to match (a bad build: only the readiness check can catch it);
    held: B whose server waits on files the test removes (HOLD); py313: 3.13 only."""
    tmp = tmp_path_factory.mktemp("edge-x86")
    work = tmp / "x86_64"
    shutil.copytree(tiny_bert_build, work)
    a = _build_edge(work, "x86_64", tmp / "a.tar.gz")
    a_again = _build_edge(work, "x86_64", tmp / "a-again.tar.gz")
    b = _build_edge(work, "x86_64", tmp / "b.tar.gz", pythons=("3.11", "3.12"))
    py313 = _build_edge(work, "x86_64", tmp / "py313.tar.gz", pythons=("3.13",))

    def flip(name, data):
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:] if name.endswith("model.weights") else data

    corrupt = _repack(b, tmp / "corrupt.tar.gz", flip)
    b_id = _info(b)["version_id"]

    def half_weights(name, data):  # with a version id of its own, as a rebuilt tarball has
        if name.endswith("model.weights"):
            return data[: len(data) // 2]
        if name.endswith("/install.sh"):
            return data.replace(f"VERSION_ID={b_id}".encode(), b"VERSION_ID=0badbadbad00")
        return data

    unready = _rebuilt(b, tmp / "unready.tar.gz", half_weights)

    def hold(name, data):
        return data + HOLD.encode() if name.endswith("/payload/app/runtime/__init__.py") else data

    held = _rebuilt(b, tmp / "held.tar.gz", hold)
    return {"a": a, "a_again": a_again, "b": b, "corrupt": corrupt, "unready": unready, "py313": py313,
            "held": held, "dir": work}


def _info(tarball: Path) -> dict:
    with tarfile.open(tarball) as tar:
        name = next(m.name for m in tar.getmembers() if m.name.endswith("/edge.json"))
        return json.loads(tar.extractfile(name).read())


class Device:
    """A private copy of a Debian 12 root filesystem, used through chroot, with /proc
    mounted as on a device (install.sh's readiness check reads it)."""

    def __init__(self, arch: str, tmp: Path):
        from builder.local.sandbox import ensure_rootfs
        from builder.progress import Progress

        src = ensure_rootfs("3.11", arch, Progress(quiet=True))
        self.root = (tmp / f"device-{arch}").resolve()
        subprocess.run(["cp", "-a", str(src), str(self.root)], check=True)
        if not (self.root / "etc" / "passwd").exists():
            # An unpacked-only root filesystem (arm64: no maintainer scripts ran) has no
            # users; what base-passwd's postinst writes on every real system.
            for name in ("passwd", "group"):
                shutil.copy2(self.root / "usr" / "share" / "base-passwd" / f"{name}.master", self.root / "etc" / name)
        subprocess.run(["mount", "-t", "proc", "proc", str(self.root / "proc")], check=True)
        self.count = 0
        self.servers = []

    def listing(self) -> set[str]:
        """Every path of the root filesystem, except scratch places (/var/tmp is not one:
        install.sh's scratch directories must be gone from there), the system Python's
        bytecode caches (the arm64 root filesystem is only unpacked, no py3compile ran, so any
        Python run as root there writes them, while a real device ships them already) and the
        backups and lock file shadow-utils writes on any change of users (install.sh adds the
        service's user; a real system has them already)."""
        skip = ("tmp", "proc", "dev", "var/cache", "root/.cache")
        found = set()
        for folder, dirs, files in os.walk(self.root):
            rel = Path(folder).relative_to(self.root).as_posix()
            names = {f"{rel}/{name}" if rel != "." else name for name in dirs + files}
            dirs[:] = [d for d in dirs if (f"{rel}/{d}" if rel != "." else d) not in skip]  # /proc: not walked
            found |= {name for name in names if not name.startswith(tuple(s + "/" for s in skip))}
        return {rel for rel in found if not (rel.startswith("usr/lib/python3") and "__pycache__" in rel)
                and rel not in SHADOW_BACKUPS}

    def path(self, inside: str) -> Path:
        """A path inside the device, as seen from the host."""
        return self.root / inside.lstrip("/")

    def scratch(self) -> set[str]:
        """What /tmp and /var/tmp hold, but the tarballs unpack() extracted."""
        return {f"{d}/{p.name}" for d in ("tmp", "var/tmp") for p in (self.root / d).iterdir()
                if not (d == "tmp" and p.name.startswith("edge-"))}

    def unpack(self, tarball: Path) -> str:
        """The tarball extracted under /tmp inside; its install.sh path there."""
        self.count += 1
        where = self.root / "tmp" / f"edge-{self.count}"
        where.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(where, filter="tar")
        return f"/tmp/edge-{self.count}/{_info(tarball)['top']}/install.sh"

    def run(self, *argv, input_text=None, timeout=600):
        return subprocess.run(["chroot", str(self.root), *map(str, argv)], capture_output=True, text=True,
                              input=input_text, timeout=timeout)

    def install(self, tarball: Path, *args):
        return self.run("/bin/sh", self.unpack(tarball), *args)

    def start_install(self, tarball: Path, *args) -> subprocess.Popen:
        """install.sh running in the background (its output: .communicate())."""
        proc = subprocess.Popen(["chroot", str(self.root), "/bin/sh", self.unpack(tarball), *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.servers.append(proc)
        return proc

    def processes(self):
        """(pid, argv, uids, gids) of each process running in this device's chroot; uids and
        gids: real, effective, saved, filesystem."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "root") != str(self.root):
                    continue
                argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0")[:-1]]
                status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines())
            except OSError:  # it exited meanwhile
                continue
            yield (int(entry.name), argv, [int(x) for x in status["Uid"].split()],
                   [int(x) for x in status["Gid"].split()])

    def user(self, name: str) -> tuple[int, int]:
        """uid and gid of a user of the device."""
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2]), int(fields[3])
        raise AssertionError(f"no user {name} on the device")

    def serve(self, prefix: str, port: int, timeout: float = 120):
        proc = subprocess.Popen(["chroot", str(self.root), f"{prefix}/bin/edgebundle-serve"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.servers.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("the server exited: " + proc.stdout.read()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                    return proc
            except OSError:
                time.sleep(0.3)
        pytest.fail("the server did not become ready")

    def stop(self, proc) -> None:
        proc.terminate()
        proc.wait(timeout=60)

    def close(self):
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for name in ("edge-hold-start", "edge-hold-load"):  # a held server still waiting there goes on and exits
            self.path(name).unlink(missing_ok=True)
        for pid, _, _, _ in self.processes():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["umount", "--lazy", str(self.root / "proc")], check=False)
        if os.path.ismount(self.root / "proc"):  # never rmtree through a live /proc
            raise RuntimeError(f"cannot unmount {self.root / 'proc'}; remove {self.root} by hand")
        shutil.rmtree(self.root, ignore_errors=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, path: str, body) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _check_answers(device: Device, prefix: str, port: int, model_dir: Path, tiny_bert_dir: Path) -> None:
    """Task and tensor mode over loopback and through edgebundle-run, against PyTorch."""
    tensors = reference.tokenize(model_dir / "tokenizer.json", SENTENCES)
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    task = _post(port, "/invocations", {"inputs": SENTENCES})
    tensor = _post(port, "/invocations", {"tensors": tensors})
    np.testing.assert_allclose(np.array(task), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(tensor["tensors"]["sentence_embedding"]), ref, atol=1e-4, rtol=0)
    run = device.run(f"{prefix}/bin/edgebundle-run", json.dumps({"inputs": SENTENCES}), "-",
                     input_text=json.dumps({"tensors": tensors}))
    assert run.returncode == 0, run.stderr
    by_task, by_tensor = (json.loads(line) for line in run.stdout.splitlines())
    np.testing.assert_allclose(np.array(by_task), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(by_tensor["tensors"]["sentence_embedding"]), ref, atol=1e-4, rtol=0)


def test_edge_tarball_is_deterministic(x86_tarballs):
    """Same build, same options: the same bytes; another Python set: another version."""
    assert x86_tarballs["a"].read_bytes() == x86_tarballs["a_again"].read_bytes()
    a, b = _info(x86_tarballs["a"]), _info(x86_tarballs["b"])
    assert a["version_id"] != b["version_id"] and b["pythons"] == ["3.11", "3.12"]
    with tarfile.open(x86_tarballs["b"]) as tar:
        names = tar.getnames()
        assert all(m.mtime == 315532800 and m.uid == 0 for m in tar.getmembers())
    top = a["top"]
    for part in ("install.sh", "uninstall.sh", "README.md", "SHA256SUMS", "payload/app/runtime/serve.py",
                 "payload/app/libtvm_runtime.so", "payload/model/model.json", "payload/systemd/edgebundle.service",
                 "payload/bin/edgebundle-run"):
        assert f"{top}/{part}" in names, part
    for cp in ("cp311", "cp312"):
        wheels = [n for n in names if f"/wheelhouse/{cp}/" in n]
        assert any("/waitress-" in n for n in wheels) and any("/tokenizers-" in n for n in wheels)
        assert any("/pip-" in n for n in wheels)


def test_x86_64_install_serve_upgrade_refuse_uninstall(x86_tarballs, tiny_bert_dir, tmp_path):
    _need_chroot()
    device = Device("x86_64", tmp_path)
    try:
        before = device.listing()
        port = _port()
        prefix = f"{SLUG_PREFIX}/{_info(x86_tarballs['a'])['top'].split('-', 1)[1].rsplit('-', 1)[0]}"
        first = device.install(x86_tarballs["a"], "--no-service", "--port", port)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"{prefix}/bin/edgebundle-serve" in first.stdout  # how to start it without systemd
        a_id, b_id = _info(x86_tarballs["a"])["version_id"], _info(x86_tarballs["b"])["version_id"]
        assert os.readlink(device.root / prefix.lstrip("/") / "current") == f"versions/{a_id}"

        again = device.install(x86_tarballs["a"], "--no-service")
        assert again.returncode == 0 and "already installed" in again.stdout, again.stderr

        server = device.serve(prefix, port)
        _check_answers(device, prefix, port, x86_tarballs["dir"], tiny_bert_dir)

        upgrade = device.install(x86_tarballs["b"], "--no-service")
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        assert "checking the new version answers readiness" in upgrade.stdout
        assert os.readlink(device.root / prefix.lstrip("/") / "current") == f"versions/{b_id}"
        assert (device.root / prefix.lstrip("/") / "versions" / a_id).is_dir()  # kept for a rollback
        _post(port, "/invocations", {"inputs": "the old process still answers"})
        device.stop(server)
        server = device.serve(prefix, port)  # the port setting was kept
        _check_answers(device, prefix, port, x86_tarballs["dir"], tiny_bert_dir)

        for bad, why in (("corrupt", "do not match SHA256SUMS"), ("unready", "did not become ready")):
            refused = device.install(x86_tarballs[bad], "--no-service")
            assert refused.returncode == 1 and why in refused.stderr, refused.stdout + refused.stderr
            assert os.readlink(device.root / prefix.lstrip("/") / "current") == f"versions/{b_id}"
            assert _post(port, "/invocations", {"inputs": "still answering"})
        device.stop(server)

        wrong_python = device.install(x86_tarballs["py313"], "--no-service")
        assert wrong_python.returncode == 1 and "Python 3.11 found" in wrong_python.stderr

        gone = device.run("/bin/sh", f"{prefix}/uninstall.sh")
        assert gone.returncode == 0, gone.stderr
        assert device.listing() == before
    finally:
        device.close()


def test_wrong_python_changes_nothing(x86_tarballs, tmp_path):
    _need_chroot()
    device = Device("x86_64", tmp_path)
    try:
        before = device.listing()
        refused = device.install(x86_tarballs["py313"])
        assert refused.returncode == 1
        assert "Python 3.11 found" in refused.stderr and "wheels for Python 3.13" in refused.stderr
        assert device.listing() == before
    finally:
        device.close()


@pytest.mark.emulated_arm64
def test_arm64_install_serves_under_qemu(tiny_bert_arm64_build, tiny_bert_dir, x86_tarballs, tmp_path):
    """The arm64 tarball in an arm64 Debian 12 (binfmt qemu): installed and answering as
    PyTorch does; the x86_64 tarball refused there, changing nothing."""
    _need_chroot()
    from builder.local.sandbox import emulator

    if emulator("arm64") is None:
        pytest.skip("qemu-aarch64 is not installed")
    work = tmp_path / "arm64"
    shutil.copytree(tiny_bert_arm64_build, work)
    tarball = _build_edge(work, "arm64", tmp_path / "arm64.tar.gz")
    device = Device("arm64", tmp_path)
    try:
        before = device.listing()
        wrong = device.install(x86_tarballs["a"])
        assert wrong.returncode == 1 and "for x86_64 CPUs and this machine is aarch64" in wrong.stderr
        assert device.listing() == before

        port = _port()
        prefix = f"{SLUG_PREFIX}/{_info(tarball)['top'].split('-', 1)[1].rsplit('-', 1)[0]}"
        done = device.install(tarball, "--no-service", "--port", port)
        assert done.returncode == 0, done.stdout + done.stderr
        server = device.serve(prefix, port, timeout=300)
        _check_answers(device, prefix, port, work, tiny_bert_dir)
        device.stop(server)
        assert device.run("/bin/sh", f"{prefix}/uninstall.sh").returncode == 0
        assert device.listing() == before
    finally:
        device.close()


def test_systemd_unit_verifies(x86_tarballs, tmp_path):
    """The unit as install.sh writes it passes `systemd-analyze verify`, and its sandboxing
    rates OK in `systemd-analyze security`."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    with tarfile.open(x86_tarballs["a"]) as tar:
        tar.extractall(tmp_path, filter="tar")
    top = tmp_path / _info(x86_tarballs["a"])["top"]
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(top / "payload" / "bin" / "edgebundle-serve", prefix / "bin")
    unit = tmp_path / "edgebundle-tiny.service"
    unit.write_text((top / "payload" / "systemd" / "edgebundle.service").read_text()
                    .replace("@PREFIX@", str(prefix)).replace("@USER@", "edgebundle-tiny"))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and unit.name not in verify.stderr, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=40", str(unit)],
                              capture_output=True, text=True)
    assert security.returncode == 0, security.stdout[-2000:]
    text = unit.read_text()
    for line in ("NoNewPrivileges=yes", f"ReadOnlyPaths={prefix}", "User=edgebundle-tiny", "ProtectSystem=strict"):
        assert line in text


@pytest.mark.emulated_arm64
def test_cuda_arm64_edge_lists_cuda_prerequisites(tiny_resnet_dir, tmp_path):
    """Jetson class: --target cuda --host arm64 builds, the tarball carries the aarch64
    libtvm_runtime_cuda.so, and install.sh refuses a device without the CUDA 13 runtime and
    NVIDIA driver, naming both, changing nothing."""
    _need_chroot()
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA 13) is not installed: the cuda target cannot be built")
    from conftest import _build

    out = tmp_path / "out"
    _build(tiny_resnet_dir, out, formats=("edge",), targets=("cuda",), host="arm64", cuda_archs=("sm_87",),
           python="3.11")
    tarball = out / "cuda" / "edge.tar.gz"
    info = _info(tarball)
    assert info["arch"] == "aarch64" and info["device"] == "cuda"
    assert {"libcudart.so.13", "libcuda.so.1"} <= set(info["system_libraries"])
    with tarfile.open(tarball) as tar:
        lib = tar.extractfile(f"{info['top']}/payload/app/libtvm_runtime_cuda.so").read(20)
        readme = tar.extractfile(f"{info['top']}/README.md").read().decode()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 183  # EM_AARCH64
    assert "JetPack 7" in readme
    device = Device("arm64", tmp_path)
    try:
        before = device.listing()
        refused = device.install(tarball, "--no-service")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "missing system libraries: libcudart.so.13 libcuda.so.1" in refused.stderr
        assert device.listing() == before
    finally:
        device.close()


def test_service_user_names_fit_shadow_utils():
    """useradd on Debian 12 / Ubuntu 24.04 refuses names over 32 characters."""
    from builder.bundle.formats.edge import service_user

    assert service_user("tiny-bert0") == "edgebundle-tiny-bert0"
    long = service_user("distilbert-base-uncased-finetuned-sst-2-english")
    assert len(long) <= 31 and long.startswith("eb-distilbert")
    assert long != service_user("distilbert-base-uncased-finetuned-sst-2-englisx")


def test_run_answers_every_event_even_after_a_failure(tiny_bert_build, monkeypatch, capsys):
    """edgebundle-run: one JSON line per event; bad JSON, bad input and a failure inside the
    model each answer {"error"} and exit 1, and the events after them are still answered."""
    import runtime
    from runtime import run

    real_load = runtime.load

    def load(model_dir):
        model = real_load(model_dir)
        real_execute = model.execute_each

        def execute_each(items):
            if any(item.rows == 2 for item in items):
                raise RuntimeError("kernel failure")
            return real_execute(items)

        model.execute_each = execute_each
        return model

    monkeypatch.setattr(runtime, "load", load)
    status = run.main([str(tiny_bert_build), '{"inputs": "a"}', "{not json", '{"inputs": 3}',
                       '{"inputs": ["x", "y"]}', '{"inputs": "b"}'])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1 and len(lines) == 5
    assert isinstance(lines[0], list) and isinstance(lines[4], list)
    assert [("error" in x) if isinstance(x, dict) else False for x in lines[1:4]] == [True, True, True]


def test_install_scripts_use_no_predictable_scratch_names(x86_tarballs):
    """No file of the installer sits at a name another local user could guess and plant a
    symlink at (/tmp/edgebundle-pip.$$ had root write through it): every scratch path comes
    from mktemp -d with a random part."""
    with tarfile.open(x86_tarballs["a"]) as tar:
        top = _info(x86_tarballs["a"])["top"]
        scripts = {name: tar.extractfile(f"{top}/{name}").read().decode() for name in ("install.sh", "uninstall.sh")}
    for name, text in scripts.items():
        assert "$$" not in text, f"{name} names a file after its process id"
        for line in text.splitlines():
            # Any path beneath a temporary directory must be a mktemp -d template.
            for m in re.finditer(r"(\$\{TMPDIR(:-[^}]*)?\}|\$TMPDIR|/var/tmp|/tmp)/\S*", line):
                assert "mktemp -d" in line and re.fullmatch(r".*/edgebundle-[a-z]+\.X{10}\"\)", m.group(0)), \
                    f"{name}: a scratch path not made by mktemp -d: {line.strip()}"
    assert "mktemp -d" in scripts["install.sh"] and re.search(r"^trap \S+ EXIT$", scripts["install.sh"], re.M)


def _pip_that_marks() -> bytes:
    """A pip wheel that only leaves /edge-marker-pip behind when anything runs it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as whl:
        whl.writestr("pip/__init__.py", "")
        whl.writestr("pip/__main__.py", "open('/edge-marker-pip', 'w').write('pip ran')\n")
    return buf.getvalue()


def _add_sitecustomize(top: Path) -> str:
    """A file SHA256SUMS does not list: a sitecustomize.py every Python of the install runs
    (the old readiness check ran one as root)."""
    (top / "payload" / "app" / "sitecustomize.py").write_text("open('/edge-marker-site', 'w').write('site ran')\n")
    return "payload/app/sitecustomize.py: not listed in SHA256SUMS"


def _change_pip(top: Path) -> str:
    """A changed wheel: pip's own, which the old installer ran before it checked SHA256SUMS."""
    [whl] = (top / "payload" / "wheelhouse" / "cp311").glob("pip-*.whl")
    whl.write_bytes(_pip_that_marks())
    return f"payload/wheelhouse/cp311/{whl.name}: changed"


def _remove_manifest(top: Path) -> str:
    (top / "payload" / "model" / "model.json").unlink()
    return "payload/model/model.json: missing"


def _add_link(top: Path) -> str:
    (top / "payload" / "app" / "extra.py").symlink_to("/etc/passwd")
    return "payload/app/extra.py: not a plain file"


@pytest.mark.parametrize("change", [_add_sitecustomize, _change_pip, _remove_manifest, _add_link],
                         ids=lambda f: f.__name__.lstrip("_"))
def test_install_refuses_files_not_as_built_before_running_any(x86_tarballs, tmp_path, change):
    """The extracted tarball changed after the build: refused, naming the file, before
    anything of the tarball runs (pip included), changing nothing."""
    _need_chroot()
    device = Device("x86_64", tmp_path)
    try:
        before = device.listing()
        script = device.unpack(x86_tarballs["a"])
        named = change(device.path(script).parent)
        refused = device.run("/bin/sh", script, "--no-service")
        assert not device.path("/edge-marker-pip").exists(), "pip ran from a wheel SHA256SUMS did not vouch for"
        assert not device.path("/edge-marker-site").exists(), "a file SHA256SUMS does not list ran"
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "do not match SHA256SUMS" in refused.stderr and named in refused.stderr, refused.stderr
        assert device.listing() == before
    finally:
        device.close()


class _FakeReady:
    """What a hostile local user would run: an HTTP server answering 200 to everything,
    counting what reaches it."""

    def __init__(self, port: int):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body = b'{"ready": true}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _check_server(device: Device, install: subprocess.Popen, timeout: float = 120):
    """The readiness check's server of a running install.sh: (pid, argv, uids, gids)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, argv, uids, gids in device.processes():
            if "runtime.serve" in argv and any(a.endswith("/model") and "/versions/" in a for a in argv):
                return pid, argv, uids, gids
        if install.poll() is not None:
            pytest.fail("install.sh ended before its readiness check started: "
                        + install.stdout.read() + install.stderr.read())
        time.sleep(0.02)
    pytest.fail("no readiness check server appeared")


def _listening_port(pid: int, timeout: float = 120) -> int:
    """The 127.0.0.1 port PID listens on (its socket inodes against /proc/net/tcp)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:  # closed meanwhile
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[1].startswith("0100007F:") and fields[9] in inodes:
                return int(fields[1].split(":")[1], 16)
        time.sleep(0.05)
    pytest.fail(f"process {pid} never listened on 127.0.0.1")


def _status(port: int, method: str, path: str, headers=None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=b'{"inputs": "x"}' if method == "POST" else None, headers=headers or {})
    status = conn.getresponse().status
    conn.close()
    return status


def test_readiness_check_cannot_be_passed_by_a_fake_server(x86_tarballs, tmp_path):
    """A local user's server answering 200 on whatever port the check server is told (its
    command line is public), taken before the check server can listen, cannot pass the
    readiness check for a version that never becomes ready: refused, nothing changed, the
    installed version still current, and the fake never asked."""
    _need_chroot()
    device = Device("x86_64", tmp_path)
    fake = None
    try:
        info = _info(x86_tarballs["a"])
        prefix = f"{SLUG_PREFIX}/{info['top'].split('-', 1)[1].rsplit('-', 1)[0]}"
        first = device.install(x86_tarballs["a"], "--no-service", "--port", _port())
        assert first.returncode == 0, first.stdout + first.stderr
        scratch = device.scratch()
        # The held check server waits to listen until /edge-hold-start goes, then never
        # gets ready (/edge-hold-load stays).
        device.path("/edge-hold-load").touch()
        before = device.listing()
        device.path("/edge-hold-start").touch()
        install = device.start_install(x86_tarballs["held"], "--no-service", "--ready-timeout", "15")
        _, argv, _, _ = _check_server(device, install)
        told = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
        fake = _FakeReady(told)  # on that port if it was told one (0: none to take; one of its own)
        device.path("/edge-hold-start").unlink()
        out, err = install.communicate(timeout=300)
        assert install.returncode == 1 and "did not become ready" in err, out + err
        assert fake.hits == [], "the check asked a server that was not the new version's"
        assert os.readlink(device.path(prefix) / "current") == f"versions/{info['version_id']}"
        assert device.listing() == before and device.scratch() == scratch
    finally:
        if fake is not None:
            fake.close()
        device.close()


def test_readiness_check_runs_as_the_service_user_with_a_token(x86_tarballs, tmp_path):
    """The check server runs as the service user (not root), requires a bearer token (a
    one-time one: this install has none; in a directory only root and the service's group
    can enter), and listens on a port nobody else can then take; the installer's scratch
    directories are private, randomly named, and gone afterwards. Held listening but not
    ready (/edge-hold-load) while looked at."""
    _need_chroot()
    from builder.bundle.formats.edge import service_user

    device = Device("x86_64", tmp_path)
    try:
        info = _info(x86_tarballs["held"])
        slug = info["top"].split("-", 1)[1].rsplit("-", 1)[0]
        scratch = device.scratch()
        device.path("/edge-hold-load").touch()
        install = device.start_install(x86_tarballs["held"], "--no-service")
        pid, argv, uids, gids = _check_server(device, install)
        assert 0 not in uids + gids, f"the check server runs as root: uids {uids}, gids {gids}"
        uid, gid = device.user(service_user(slug))
        assert uids == [uid] * 4 and gids == [gid] * 4, f"the check server runs as uids {uids}, gids {gids}"
        assert "--token-file" in argv, f"the check server runs without a token: {argv}"
        token_file = device.path(argv[argv.index("--token-file") + 1])
        for path, mode in ((token_file, 0o640), (token_file.parent, 0o750)):
            st = path.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, gid), path
        for entry in device.scratch() - scratch:  # the installer's own: private, random names
            st = device.path(entry).stat()
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) in (0o700, 0o750), entry
            assert re.fullmatch(r"var/tmp/edgebundle-[a-z]+\.\w{10}", entry), entry
        port = _listening_port(pid)
        with socket.socket() as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", port))  # nobody else can hold it now
        assert _status(port, "POST", "/invocations") == 401
        assert _status(port, "POST", "/invocations", {"Authorization": "Bearer " + "x" * 64}) == 401
        assert _status(port, "GET", "/v2/health/ready") == 503  # held: not ready, so not passed
        device.path("/edge-hold-load").unlink()
        out, err = install.communicate(timeout=300)
        assert install.returncode == 0, out + err
        prefix = f"{SLUG_PREFIX}/{slug}"
        assert os.readlink(device.path(prefix) / "current") == f"versions/{info['version_id']}"
        assert device.scratch() == scratch  # nothing left behind
    finally:
        device.close()
