#!/bin/bash
# Install what the pipeline needs on a Debian 12 machine (run as root), then nox in a
# virtual environment at .venv/. Safe to run again.
# The packages come from appliance_build/host-tools.tsv, the one list of every host command
# the pipeline, its nox sessions and its tests run.
set -euo pipefail
cd "$(dirname "$0")"

packages=()
while read -r name package _stages; do
    case "$name" in ''|'#'*) continue ;; esac
    case " ${packages[*]} " in *" $package "*) ;; *) packages+=("$package") ;; esac
done < appliance_build/host-tools.tsv

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f '${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Packer is packaged only in Debian 12 (1.6.6); elsewhere it comes from HashiCorp.
    # (captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail)
    packer_policy=$(apt-cache policy packer 2>/dev/null || true)
    if [[ " ${missing[*]} " == *" packer "* && "$packer_policy" != *"Candidate: "[0-9]* ]]; then
        echo "setup-host.sh: this system's archive has no 'packer' package." >&2
        echo "  Install Packer from HashiCorp's apt repository (https://developer.hashicorp.com/packer/install)," >&2
        echo "  then 'packer init' fetches the qemu plugin (offline: 'packer plugins install --path FILE" >&2
        echo "  github.com/hashicorp/qemu'), and run ./setup-host.sh again." >&2
        exit 2
    fi
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
