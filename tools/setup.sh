#!/bin/bash
# Idempotent set-up of a fresh Debian machine (as root) for running and testing Tandem:
# Debian packages for the real clients the tests drive, and a venv with the project in it.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    python3 python3-venv python3-dev python3-libnbd python3-rtslib-fb gcc
    qemu-utils nbdkit libnbd-bin fuse3  # libnbd-bin has nbdinfo, nbdcopy, nbdfuse
    fio e2fsprogs util-linux
    qemu-system-x86 busybox-static kmod libiscsi-bin open-iscsi iproute2
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's python3 with its site packages: libnbd's and rtslib-fb's bindings come from apt.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.tandem-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
echo "setup: ready (.venv/bin/tandem)" >&2
