#!/bin/bash
# Install what the pipeline needs on a Debian 12 / Ubuntu 24.04 machine (run as root),
# then nox in a virtual environment at .venv/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

packages=(
    python3 python3-venv python3-pip
    packer qemu-system-x86 qemu-utils ovmf
    mmdebstrap xorriso e2fsprogs dosfstools fdisk busybox-static
    openssh-client cloud-init shellcheck ca-certificates
)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f '${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# cloud-init is installed for `cloud-init schema` only: never let it run on this host.
if [ -d /etc/cloud ] && [ ! -e /etc/cloud/cloud-init.disabled ]; then
    touch /etc/cloud/cloud-init.disabled
fi

if [ ! -x .venv/bin/nox ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "nox==2026.10.20"
fi
echo "ready: .venv/bin/nox -l lists the sessions"
