"""Stand-in base images, made locally: no registry is reachable here.

- the serving base: a debootstrap'd Debian trixie (python3.13 on PATH), as
  docker.io/library/python:3.13-slim is a Debian with python3.13 on PATH;
- the Lambda base: the same root filesystem laid out like AWS's public.ecr.aws/lambda/python:3.13
  (LAMBDA_TASK_ROOT=/var/task, the runtime interface client awslambdaric in /var/runtime,
  ENTRYPOINT /lambda-entrypoint.sh, which execs /var/runtime/bootstrap HANDLER).

Both come from the root filesystems `edgebundle invoke` already makes and caches
(builder/local/sandbox.py), imported with `podman import`, for x86_64 and arm64 (arm64
containers run through binfmt-registered qemu).
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

PYTHON = "3.13"
# Bump when _import or the image layout changes in a way its inputs below do not show.
_RECIPE = 1
_ENTRYPOINT = """#!/bin/sh
# Stand-in for AWS's /lambda-entrypoint.sh (the real one starts the Runtime Interface
# Emulator when AWS_LAMBDA_RUNTIME_API is unset; edgebundle invoke always sets it).
if [ -z "${AWS_LAMBDA_RUNTIME_API}" ]; then
  echo "AWS_LAMBDA_RUNTIME_API is not set (this stand-in has no emulator)" >&2
  exit 64
fi
exec /var/runtime/bootstrap "$@"
"""


def _bootstrap() -> str:
    import shlex

    from builder.local.lambda_runtime import bootstrap_argv

    # As Lambda: the task root first, then the layers merged under /opt, the standard
    # library, the runtime client last. The handler is the entrypoint's first argument.
    args = bootstrap_argv("/var/task", "/var/runtime", "HANDLER", "/opt")
    return "#!/bin/sh\nexec python3 -I -S " + " ".join(
        '"$1"' if a == "HANDLER" else shlex.quote(a) for a in args) + "\n"


def _tag(name: str, parts: list) -> str:
    """`name` tagged with a digest of everything the image is made from: a change to any of
    it (the bootstrap, the root filesystem's recipe, the runtime client) makes a new image
    instead of reusing a stale one from podman's store."""
    digest = hashlib.sha256(json.dumps([_RECIPE, *parts]).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def _exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def _import(rootfs: Path, arch: str, tag: str, changes: list[str], extra: dict[str, tuple[bytes, int]],
            extra_dirs: dict[str, Path] | None = None) -> None:
    buf = io.BytesIO()
    empty = ["proc", "sys", "dev"] + [d for d in ("var/task",) if not (rootfs / d).exists()]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(rootfs.iterdir()):
            if entry.name not in empty:  # mount points: the engine provides them
                tar.add(entry, arcname=entry.name)
        for name in empty:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for arcname, folder in (extra_dirs or {}).items():
            tar.add(folder, arcname=arcname)
        for name, (data, mode) in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    argv = ["podman", "import", "--arch", {"x86_64": "amd64", "arm64": "arm64"}[arch]]
    for change in changes:
        argv += ["--change", change]
    subprocess.run([*argv, "-", tag], input=buf.getvalue(), check=True, capture_output=True)


def serve_base(arch: str) -> str:
    from builder.local import sandbox

    changes = ["ENV PATH=/usr/local/bin:/usr/bin:/bin", "CMD [\"python3\"]"]
    tag = _tag(f"localhost/edgebundle-standin/python:{PYTHON}-slim-{arch}",
               [sandbox.rootfs_key(PYTHON, arch), changes])
    if not _exists(tag):
        rootfs = sandbox.ensure_rootfs(PYTHON, arch)
        _import(rootfs, arch, tag, changes, {})
    return tag


def lambda_base(arch: str) -> str:
    from builder.local import sandbox
    from builder.local.lambda_runtime import AWSLAMBDARIC_REQUIREMENTS, awslambdaric_dir

    changes = ["ENV LAMBDA_TASK_ROOT=/var/task", "ENV LAMBDA_RUNTIME_DIR=/var/runtime", "ENV LANG=en_US.UTF-8",
               "ENV PATH=/usr/local/bin:/usr/bin:/bin", "WORKDIR /var/task",
               'ENTRYPOINT ["/lambda-entrypoint.sh"]']
    files = {"lambda-entrypoint.sh": _ENTRYPOINT, "var/runtime/bootstrap": _bootstrap()}
    tag = _tag(f"localhost/edgebundle-standin/lambda-python:{PYTHON}-{arch}",
               [sandbox.rootfs_key(PYTHON, arch), list(AWSLAMBDARIC_REQUIREMENTS), changes, files])
    if not _exists(tag):
        rootfs = sandbox.ensure_rootfs(PYTHON, arch)
        ric = awslambdaric_dir(PYTHON, arch)
        _import(rootfs, arch, tag, changes, {name: (text.encode(), 0o755) for name, text in files.items()},
                extra_dirs={"var/runtime": ric})
    return tag
