#!/bin/bash
# 10: Docker engine from the distribution (Debian's docker.io), listening on its unix socket only.
# Runs in the build VM of the cached system layer (steps below 50): configures and checks the engine.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# FLOWER_BASE_PACKAGES (from the build: the suite's Docker engine and the definition's `packages`,
# validated names): a bootstrapped Debian base already has each of them (installed in its chroot at
# host speed); only a downloaded cloud image (ubuntu-24.04) still needs them here.
# shellcheck disable=SC2206  # the package list is meant to split
wanted=(${FLOWER_BASE_PACKAGES:?the build passes the packages the base must have})
missing=()
for package in "${wanted[@]}"; do
    name="${package%%=*}"
    if [ "$(dpkg-query -W -f '${db:Status-Status}' "$name" 2>/dev/null)" != installed ]; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== apt-get update; installing ${missing[*]}"
    apt-get update -q -o Acquire::Languages=none   # no translation indexes: smaller, faster
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "== ${wanted[*]}: installed in the bootstrap chroot"
fi

# No TCP listener: Debian's unit starts dockerd with -H fd:// only; make sure nothing adds one.
install -d -m 0755 /etc/docker
if [ ! -s /etc/docker/daemon.json ]; then
    printf '{\n  "log-driver": "journald"\n}\n' > /etc/docker/daemon.json
fi

# CDI (Container Device Interface: `docker run --device nvidia.com/gpu=all`) needs Docker
# Engine 25 or later with the "cdi" feature on (https://docs.docker.com/reference/cli/dockerd/#enable-cdi-devices);
# Debian 13's docker.io is 26.1, Debian 12's 20.10 has no CDI. Merged into daemon.json: every
# other key stays as it is.
engine="$(dpkg-query -W -f '${Version}' docker.io)"
if dpkg --compare-versions "$engine" ge 25; then
    echo "== docker.io $engine: enabling CDI in /etc/docker/daemon.json"
    python3 - /etc/docker/daemon.json <<'PY'
import json, os, sys
path = sys.argv[1]
with open(path) as f:
    config = json.load(f)
if not isinstance(config, dict) or not isinstance(config.setdefault("features", {}), dict):
    sys.exit(f"{path}: expected a JSON object with 'features' an object, got {config!r}")
config["features"]["cdi"] = True
with open(path + ".new", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".new", path)
PY
fi

systemctl enable docker.service containerd.service
systemctl restart docker.service
docker version --format 'docker engine {{.Server.Version}}'
if dpkg --compare-versions "$engine" ge 25; then
    # dockerd reports its CDI spec directories only with the feature on (/etc/cdi, /var/run/cdi)
    cdi_dirs="$(docker info --format '{{json .CDISpecDirs}}')"
    case "$cdi_dirs" in
        '['*'"'*) echo "PASS: CDI enabled, spec directories $cdi_dirs" ;;
        *) echo "FAIL: dockerd reports no CDI spec directories ($cdi_dirs) although daemon.json enables CDI" >&2; exit 1 ;;
    esac
fi
