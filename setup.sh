#!/usr/bin/env bash
# Installs everything edgepress needs (Debian packages, .venv with pinned Python packages,
# edgepress itself), then runs the main job: a bundled model built for x86_64 and arm64,
# both verified against onnxruntime, with the reports printed.
#   ./setup.sh            install + main job
#   ./setup.sh --no-demo  install only
set -euo pipefail
cd "$(dirname "$0")"

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the aarch64 cross toolchain and qemu-user (arm64 target and its tests),
# a host C/C++ compiler (TVM links libraries with it), OpenSSH (the device-bench tests run a
# real sshd on loopback), Python 3.11 with venv.
apt_packages=(gcc g++ gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user openssh-server openssh-client)
command -v python3.11 >/dev/null 2>&1 || apt_packages+=(python3.11 python3.11-venv)
python3.11 -c "import ensurepip" >/dev/null 2>&1 || apt_packages+=(python3.11-venv)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "setup: installed edgepress into .venv ($(.venv/bin/compress --version))"

if [ "${1:-}" = "--no-demo" ]; then
  exit 0
fi

# The main job: the digits CNN (trained here on scikit-learn's 8x8 digits) built for x86_64 and
# for arm64 (cross-linked, run under qemu-aarch64), each verified against onnxruntime.
.venv/bin/compress example digits -o build/models --force
for target in x86_64 arm64; do
  .venv/bin/compress build/models/digits.onnx --target "$target" -o "build/digits-$target" --force -v
done
