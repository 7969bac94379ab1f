"""The container engine on this machine: podman, buildah or docker, driven as commands.

Images are built reproducibly: a fixed creation time (podman/buildah --timestamp 0, which
also stamps every file in the layers; docker through SOURCE_DATE_EPOCH) over a context whose
files are already normalised (builder/bundle/context.py), so two builds of one context give
the same layer digests.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess

from builder.errors import BundleError, ToolMissingError

PREFERENCE = ("podman", "buildah", "docker")


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str
    path: str

    @property
    def can_run(self) -> bool:
        return self.name != "buildah"

    def build_argv(self, context, tag: str, platform: str, image_format: str) -> list[str]:
        """`image_format` docker keeps HEALTHCHECK, which the OCI image config has no field for."""
        if self.name == "docker":
            return [self.path, "build", "--platform", platform, "--build-arg", "SOURCE_DATE_EPOCH=0",
                    "-t", tag, "-f", f"{context}/Dockerfile", str(context)]
        return [self.path, "build", "--timestamp", "0", "--format", image_format, "--platform", platform,
                "--layers", "-t", tag, "-f", f"{context}/Dockerfile", str(context)]

    def save_argv(self, tag: str, path) -> list[str]:
        if self.name == "podman":
            return [self.path, "save", "--format", "oci-archive", "-o", str(path), tag]
        if self.name == "buildah":
            return [self.path, "push", tag, f"oci-archive:{path}:{tag}"]
        return [self.path, "save", "-o", str(path), tag]

    def run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = "\n    ".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-15:])
            raise BundleError(f"{what} failed ({self.name} exited with {proc.returncode}):\n    {tail}",
                              where=shlex.join(argv), hint=_hint(self.name, tail))
        return proc

    def has(self, ref: str) -> bool:
        """Whether the engine's store holds `ref`."""
        argv = [self.path, "image", "inspect", ref] if self.name != "buildah" else \
            [self.path, "inspect", "--type", "image", ref]
        return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL).returncode == 0

    def inspect(self, ref: str) -> dict:
        fmt = "{{json .}}"
        argv = [self.path, "image", "inspect", "--format", fmt, ref] if self.name != "buildah" else \
            [self.path, "inspect", "--type", "image", ref]
        out = self.run(argv, f"inspecting {ref}").stdout
        data = json.loads(out)
        return data[0] if isinstance(data, list) else data

    def layers(self, ref: str) -> list[str]:
        info = self.inspect(ref)
        if self.name == "buildah":
            return list(info.get("OCIv1", {}).get("rootfs", {}).get("diff_ids", []))
        return list((info.get("RootFS") or {}).get("Layers") or [])


def _hint(name: str, output: str) -> str:
    if "crun" in output or "cgroup" in output:
        return (f"{name} could not start a container here: set runtime = \"runc\" under [engine] in "
                "/etc/containers/containers.conf (crun fails on some cgroup setups)")
    if "ulimit" in output or "RLIMIT" in output:
        return "set default_ulimits (e.g. nofile=1024:1024) under [containers] in /etc/containers/containers.conf"
    if "manifest unknown" in output or "pinging container registry" in output or "initializing source" in output:
        return ("the base image is neither local nor reachable: pull it where a registry is reachable and load "
                "it here, or pass another with `edgebundle build ... --base-image`")
    return "see the engine's output above"


def _docker_works(path: str) -> bool:
    # The docker client may be installed without a reachable engine (no daemon).
    try:
        return subprocess.run([path, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              timeout=10, stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine(choice: str | None = None, *, run: bool = False, commands: list[str] | None = None) -> Engine:
    """The engine asked for, or the first that works of podman, buildah, docker (buildah only
    builds: `run` skips it). ToolMissingError naming `commands` to run elsewhere if none."""
    names = [choice] if choice else [n for n in PREFERENCE if not (run and n == "buildah")]
    for name in names:
        path = shutil.which(name)
        if path and (name != "docker" or _docker_works(path)):
            return Engine(name, path)
    elsewhere = ("; on a machine with one, run:\n    " + "\n    ".join(commands)) if commands else ""
    raise ToolMissingError(
        f"no container engine: {' or '.join(names)} {'is' if len(names) == 1 else 'are'} not installed here"
        + (" (docker: installed, but no engine answers)" if "docker" in names and shutil.which("docker") else "")
        + elsewhere,
        hint="install podman (apt-get install podman) or buildah, or start docker's engine")
