#!/usr/bin/env bash
# Installs what edgebundle and its tests need on a fresh Debian 12 machine (run as root):
# debootstrap (the python3.13 Lambda sandbox `edgebundle invoke` makes once and caches),
# g++-aarch64-linux-gnu (links arm64 builds),
# qemu-user (arm64 sandboxes), podman + runc (image builds and runs; buildah and skopeo
# beside them), qemu-user-static + binfmt-support (arm64 containers and the arm64 edge
# install test's chroot), systemd (systemd-analyze checks the edge unit; nothing is
# started), and the Python packages (torch 2.13.0 CPU, TVM 0.27).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_missing=()
for pkg in debootstrap qemu-user g++-aarch64-linux-gnu podman runc buildah skopeo qemu-user-static binfmt-support \
    systemd; do
  dpkg -s "$pkg" >/dev/null 2>&1 || apt_missing+=("$pkg")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# podman on these machines: crun fails on their cgroup setup (runc works), and containers
# need explicit ulimits. Only written when the file is absent: an admin's own settings win.
if [ ! -e /etc/containers/containers.conf ]; then
  mkdir -p /etc/containers
  printf '%s\n' '[containers]' 'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]' '' \
    '[engine]' 'runtime = "runc"' > /etc/containers/containers.conf
fi
# arm64 containers: qemu registered with binfmt_misc (its F flag makes it work inside them).
if [ -d /proc/sys/fs/binfmt_misc ] && [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && command -v update-binfmts >/dev/null; then
  update-binfmts --enable qemu-aarch64 || true
fi

# torch==2.13.0 first and explicitly: it is the CPU build on this disk, while an open range
# would pull a multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[test,bench]'
