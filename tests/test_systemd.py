"""The edge installer's systemd path, for real: Debian 12 with systemd as PID 1 in a podman
container (`--systemd=always`), its image made here from debootstrap plus the systemd
package (no registry). Install as a service with a token, upgrade, a failed upgrade rolled
back, a container restart bringing the enabled service back, then an uninstall that leaves
no unit, user or prefix. Each step's time is printed (pytest -s)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from test_edge import SLUG_PREFIX, _info, x86_tarballs  # noqa: F401 - the fixture, shared

SUITE = "bookworm"  # Debian 12
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "libstdc++6")
DEBOOTSTRAP = ("--variant=minbase", f"--include={','.join(PACKAGES)}")
TOKEN = "s3cret-edge-token"


def _need_podman_and_root():
    if os.geteuid() != 0 or shutil.which("podman") is None or shutil.which(
            "debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        pytest.skip("needs root, podman and debootstrap (examples/setup.sh installs them)")


def _image() -> str:
    """localhost/edgebundle-test/systemd-bookworm:KEY, KEY a hash of what it is made from;
    made once (debootstrap, ~1 min) and kept in podman's store."""
    key = hashlib.sha256(json.dumps([SUITE, DEBOOTSTRAP]).encode()).hexdigest()[:12]
    ref = f"localhost/edgebundle-test/systemd-{SUITE}:{key}"
    if subprocess.run(["podman", "image", "exists", ref]).returncode == 0:
        return ref
    debootstrap = shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    with tempfile.TemporaryDirectory(prefix="edgebundle-systemd-") as tmp:
        root = os.path.join(tmp, "root")
        done = subprocess.run([debootstrap, *DEBOOTSTRAP, SUITE, root, "http://deb.debian.org/debian"],
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", ref], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        assert imported.returncode == 0, imported.stderr
    return ref


class Box:
    """A running container whose PID 1 is systemd."""

    def __init__(self, image: str):
        self.name = f"edgebundle-systemd-{os.getpid()}-{time.monotonic_ns()}"
        run = subprocess.run(["podman", "run", "-d", "--name", self.name, "--systemd=always", image, "/sbin/init"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        self.booted()

    def sh(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", "exec", self.name, "sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout)

    def booted(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running 2>/dev/null || true").stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise AssertionError(f"systemd did not finish booting ({state!r})")

    def copy(self, src, dest: str) -> None:
        done = subprocess.run(["podman", "cp", str(src), f"{self.name}:{dest}"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def answer(self, token: str | None = TOKEN, timeout: float = 120) -> tuple[int, str]:
        """(status, body) of an /invocations request from inside, retried while it refuses."""
        code = ("import json, sys, urllib.request, urllib.error\n"
                "req = urllib.request.Request('http://127.0.0.1:8080/invocations', "
                "data=json.dumps({'inputs': 'a sentence on the edge'}).encode(), "
                "headers={'Content-Type': 'application/json'" + (f", 'Authorization': 'Bearer {token}'" if token else "")
                + "})\n"
                "try:\n    r = urllib.request.urlopen(req, timeout=30); print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n")
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(["podman", "exec", self.name, "python3", "-c", code], capture_output=True,
                                  text=True, timeout=60)
            if done.returncode == 0:
                status, _, body = done.stdout.partition("\n")
                return int(status), body
            if time.monotonic() > deadline:
                raise AssertionError(done.stderr[-2000:])
            time.sleep(1)

    def restart(self) -> None:
        done = subprocess.run(["podman", "restart", self.name], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        self.booted()

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "-f", self.name], capture_output=True)


@pytest.mark.slow
def test_edge_service_under_systemd(x86_tarballs):  # noqa: F811 - the fixture imported above
    _need_podman_and_root()
    steps = {}
    t = time.monotonic()
    image = _image()
    steps["image (debootstrap + podman import, or cached)"] = time.monotonic() - t
    t = time.monotonic()
    box = Box(image)
    steps["boot systemd"] = time.monotonic() - t
    try:
        prefix = f"{SLUG_PREFIX}/{_info(x86_tarballs['a'])['top'].split('-', 1)[1].rsplit('-', 1)[0]}"
        a_id, b_id = _info(x86_tarballs["a"])["version_id"], _info(x86_tarballs["b"])["version_id"]
        assert box.sh(f"echo {TOKEN} > /root/token && chmod 600 /root/token").returncode == 0
        for key in ("a", "b", "unready"):
            box.copy(x86_tarballs[key], f"/root/{key}.tar.gz")

        def install(key: str, *args: str) -> subprocess.CompletedProcess:
            top = _info(x86_tarballs[key])["top"]
            return box.sh(f"cd /root && rm -rf {top} && tar xzf {key}.tar.gz && sh {top}/install.sh {' '.join(args)}")

        t = time.monotonic()
        first = install("a", "--token-file", "/root/token")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        unit = box.sh("ls /etc/systemd/system/ | grep '^edgebundle-.*\\.service$'").stdout.strip()
        assert unit, box.sh("ls /etc/systemd/system").stdout
        user = box.sh(f"sed -n 's/^User=//p' /etc/systemd/system/{unit}").stdout.strip()
        assert box.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
        assert box.sh(f"systemctl is-active {unit}").stdout.strip() == "active"
        status, body = box.answer()
        assert status == 200 and json.loads(body), body
        assert box.answer(token=None)[0] == 401  # the token guards it
        assert box.sh(f"readlink {prefix}/current").stdout.strip() == f"versions/{a_id}"
        steps["install as a service, answer with the token"] = time.monotonic() - t

        t = time.monotonic()
        upgrade = install("b")
        assert upgrade.returncode == 0, upgrade.stdout[-3000:] + upgrade.stderr[-3000:]
        assert box.sh(f"readlink {prefix}/current").stdout.strip() == f"versions/{b_id}"
        assert box.answer()[0] == 200  # the token setting was kept
        steps["upgrade to a second build"] = time.monotonic() - t

        t = time.monotonic()
        failed = install("unready")
        assert failed.returncode == 1 and "did not become ready" in failed.stderr, failed.stdout + failed.stderr
        assert box.sh(f"readlink {prefix}/current").stdout.strip() == f"versions/{b_id}"  # rolled back
        assert box.sh(f"systemctl is-active {unit}").stdout.strip() == "active"
        assert box.answer()[0] == 200
        steps["failed upgrade, rolled back"] = time.monotonic() - t

        t = time.monotonic()
        box.restart()
        assert box.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
        assert box.answer()[0] == 200  # started at boot
        assert box.sh(f"systemctl is-active {unit}").stdout.strip() == "active"
        steps["container restart: the service comes back"] = time.monotonic() - t

        t = time.monotonic()
        gone = box.sh(f"sh {prefix}/uninstall.sh")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert box.sh(f"test -e /etc/systemd/system/{unit}").returncode != 0
        assert box.sh(f"getent passwd {user}").returncode != 0
        assert box.sh(f"test -e {prefix}").returncode != 0
        assert box.sh(f"systemctl is-active {unit}").stdout.strip() != "active"
        steps["uninstall: no unit, user or prefix left"] = time.monotonic() - t
    finally:
        box.remove()
        print("\nsystemd test steps: " + "; ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
