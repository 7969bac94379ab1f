#!/usr/bin/env bash
# Installs what edgebundle and its tests need on a fresh Debian 12 machine (run as root):
# debootstrap (the python3.13 Lambda sandbox `edgebundle invoke` makes once and caches),
# g++-aarch64-linux-gnu (links arm64 builds),
# qemu-user (arm64 sandboxes), and the Python packages (torch 2.13.0 CPU, TVM 0.27).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_missing=()
for pkg in debootstrap qemu-user g++-aarch64-linux-gnu; do
  dpkg -s "$pkg" >/dev/null 2>&1 || apt_missing+=("$pkg")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# torch==2.13.0 first and explicitly: it is the CPU build on this disk, while an open range
# would pull a multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[test,bench]'
