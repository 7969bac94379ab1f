"""Format edge: the tarball is deterministic, and install.sh does on a device what it
promises, tested in Debian 12 root filesystems (debootstrap; arm64 through binfmt qemu) run
with chroot, as root, the way a device runs it: install, serve over loopback and
edgebundle-run against PyTorch, upgrade, refusal of a broken tarball while the old version
keeps answering, uninstall that leaves nothing, refusal of the wrong CPU or Python."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import reference

pytestmark = pytest.mark.slow
SENTENCES = ["an edge device on a shelf", "no network, maybe no systemd"]
SLUG_PREFIX = "/opt/edgebundle"


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


@pytest.fixture(scope="module")
def x86_tarballs(tiny_bert_build, tmp_path_factory):
    """A: Python 3.11; B: the same model rebuilt for 3.11 + 3.12 (a new version id);
    corrupt: B with a damaged weights file; unready: B with truncated weights and its
    SHA256SUMS made to match (a bad build: only the readiness check can catch it);
    py313: 3.13 only."""
    import hashlib

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
    truncated = {}

    def truncate(name, data):
        if name.endswith("model.weights"):
            data = data[: len(data) // 2]
            truncated[name.split("/", 1)[1]] = hashlib.sha256(data).hexdigest()
        return data

    half = _repack(b, tmp / "half.tar.gz", truncate)
    b_id = _info(b)["version_id"]

    def new_id(name, data):  # a rebuilt tarball has a version id of its own
        if name.endswith("/install.sh"):
            data = data.replace(f"VERSION_ID={b_id}".encode(), b"VERSION_ID=0badbadbad00")
            truncated[name.split("/", 1)[1]] = hashlib.sha256(data).hexdigest()
        return data

    half = _repack(half, tmp / "half-id.tar.gz", new_id)

    def fix_sums(name, data):
        if name.endswith("/SHA256SUMS"):
            lines = []
            for line in data.decode().splitlines():
                digest, path = line.split("  ", 1)
                lines.append(f"{truncated.get(path, digest)}  {path}")
            data = ("\n".join(lines) + "\n").encode()
        return data

    unready = _repack(half, tmp / "unready.tar.gz", fix_sums)
    return {"a": a, "a_again": a_again, "b": b, "corrupt": corrupt, "unready": unready, "py313": py313,
            "dir": work}


def _info(tarball: Path) -> dict:
    with tarfile.open(tarball) as tar:
        name = next(m.name for m in tar.getmembers() if m.name.endswith("/edge.json"))
        return json.loads(tar.extractfile(name).read())


class Device:
    """A private copy of a Debian 12 root filesystem, used through chroot."""

    def __init__(self, arch: str, tmp: Path):
        from builder.local.sandbox import ensure_rootfs
        from builder.progress import Progress

        src = ensure_rootfs("3.11", arch, Progress(quiet=True))
        self.root = tmp / f"device-{arch}"
        subprocess.run(["cp", "-a", str(src), str(self.root)], check=True)
        self.count = 0
        self.servers = []

    def listing(self) -> set[str]:
        """Every path of the root filesystem, except scratch places and the system Python's
        bytecode caches: the arm64 root filesystem is only unpacked (no py3compile ran), so
        any Python run as root there writes them, while a real device ships them already."""
        skip = ("tmp/", "proc/", "dev/", "var/cache/", "root/.cache")
        return {rel for rel in (p.relative_to(self.root).as_posix() for p in self.root.rglob("*"))
                if not rel.startswith(skip) and not (rel.startswith("usr/lib/python3") and "__pycache__" in rel)}

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
