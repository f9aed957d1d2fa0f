#!/bin/bash
# 10: Docker engine from the distribution (Debian's docker.io), listening on its unix socket only.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

echo "== apt-get update"
apt-get update -q -o Acquire::Languages=none   # no translation indexes: smaller, faster
echo "== installing docker.io ${FLOWER_EXTRA_PACKAGES:-}"
# apparmor: Debian's kernel has AppArmor on, and dockerd needs apparmor_parser to
# load its docker-default profile (a Recommends of docker.io, so named here).
# shellcheck disable=SC2086  # the package list is meant to split (validated names)
apt-get install -y -q --no-install-recommends docker.io apparmor ${FLOWER_EXTRA_PACKAGES:-}

# No TCP listener: Debian's unit starts dockerd with -H fd:// only; make sure nothing adds one.
install -d -m 0755 /etc/docker
if [ ! -s /etc/docker/daemon.json ]; then
    printf '{\n  "log-driver": "journald"\n}\n' > /etc/docker/daemon.json
fi
systemctl enable docker.service containerd.service
systemctl restart docker.service
docker version --format 'docker engine {{.Server.Version}}'
