#!/bin/bash
# 65: NVIDIA Container Toolkit for Docker, which gives containers the GPU (nvidia-docker2 is
# deprecated in its favour: https://github.com/NVIDIA/nvidia-docker, install guide:
# https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html).
# The source was resolved on the build host (appliance_build/stages/toolkit.py):
#   nvidia-repo  NVIDIA's apt repository, its signing key (fetched on the host and checked here
#                against FLOWER_TOOLKIT_KEY_FINGERPRINT), exact version pinned (apt preferences) and held
#   mirror       an apt mirror laid out like NVIDIA's repository, same key check, pin and hold
#   local        .deb files handed in with the build (air-gapped builds)
#   absent       explicitly allowed: nothing installed, recorded; publishing refuses the image
# Also installed into the GPU image as /opt/flower/scripts/install-container-toolkit.sh, so an
# operator can add the toolkit later from local .deb files:
#   FLOWER_TOOLKIT_SOURCE=local FLOWER_UPLOAD=/dir/containing/toolkit/ install-container-toolkit.sh
set -euo pipefail
: "${FLOWER_TOOLKIT_SOURCE:?}" "${FLOWER_UPLOAD:?}"
export DEBIAN_FRONTEND=noninteractive
source_kind="$FLOWER_TOOLKIT_SOURCE"
version="${FLOWER_TOOLKIT_VERSION:-}"
record=/etc/flower/gpu-toolkit.json
install -d -m 0755 /etc/flower

write_record() {  # status, version, detail
    python3 - "$record" "$1" "$2" "$3" "$source_kind" <<'PY'
import json, sys
from pathlib import Path
path, status, version, detail, source = sys.argv[1:]
Path(path).write_text(json.dumps({"toolkit": status, "version": version, "source": source, "detail": detail},
                                 indent=2) + "\n")
PY
}

packages=(nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools libnvidia-container1)
case "$source_kind" in
    absent)
        echo "WARNING: building WITHOUT the NVIDIA Container Toolkit (explicitly allowed)."
        echo "WARNING: containers cannot use the GPU; publishing refuses this image."
        write_record absent "" "no toolkit source was available and building without it was allowed"
        exit 0
        ;;
    nvidia-repo|mirror)
        : "${FLOWER_TOOLKIT_REPO:?}" "${version:?FLOWER_TOOLKIT_VERSION is required}"
        : "${FLOWER_TOOLKIT_KEY_FINGERPRINT:?FLOWER_TOOLKIT_KEY_FINGERPRINT is required (the pinned key)}"
        key="${FLOWER_UPLOAD}/toolkit/nvidia-container-toolkit.asc"
        # The primary key's fingerprint: the first `fpr` record of gpg's colon listing (gpg(1), --with-colons).
        gnupg_home="$(mktemp -d)"
        found="$(GNUPGHOME="$gnupg_home" gpg --batch --with-colons --show-keys "$key" 2>/dev/null \
            | awk -F: '$1 == "fpr" {print $10; exit}')" || found=""
        rm -rf "$gnupg_home"
        if [ "$found" != "$FLOWER_TOOLKIT_KEY_FINGERPRINT" ]; then
            echo "toolkit repository key fingerprint mismatch: expected $FLOWER_TOOLKIT_KEY_FINGERPRINT, got '${found}'" >&2
            exit 1
        fi
        install -m 0644 "$key" /usr/share/keyrings/
        echo "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit.asc] ${FLOWER_TOOLKIT_REPO} /" \
            > /etc/apt/sources.list.d/nvidia-container-toolkit.list
        # The exact version, whatever newer one the repository offers later (apt_preferences(5)).
        {
            echo "# Flower appliance: the NVIDIA Container Toolkit exactly as built and tested."
            echo "Package: ${packages[*]}"
            echo "Pin: version ${version}"
            echo "Pin-Priority: 1001"
        } > /etc/apt/preferences.d/flower-nvidia-container-toolkit
        # apt-get update exits 0 when a source fails; its E:/W: lines say so (unsigned, wrong key).
        update_log="$(mktemp)"
        if ! apt-get update -q >"$update_log" 2>&1 \
            || grep -Eq "^(E:|W: (GPG error|The repository .* is not signed|Failed to fetch))" "$update_log"; then
            cat "$update_log" >&2
            rm -f "$update_log"
            echo "apt-get update failed for ${FLOWER_TOOLKIT_REPO} (unsigned, wrong key or unreachable)" >&2
            exit 1
        fi
        cat "$update_log"
        rm -f "$update_log"
        pinned=()
        for pkg in "${packages[@]}"; do pinned+=("${pkg}=${version}"); done
        apt-get install -y -q --no-install-recommends "${pinned[@]}"
        ;;
    local)
        shopt -s nullglob
        debs=("${FLOWER_UPLOAD}"/toolkit/*.deb)
        [ ${#debs[@]} -gt 0 ] || { echo "no .deb files in ${FLOWER_UPLOAD}/toolkit" >&2; exit 1; }
        apt-get install -y -q --no-install-recommends "${debs[@]}"
        ;;
    *)
        echo "unknown FLOWER_TOOLKIT_SOURCE '$source_kind' (nvidia-repo, mirror, local, absent)" >&2
        exit 2
        ;;
esac
installed="$(dpkg-query -W -f '${Version}' nvidia-container-toolkit)"
apt-mark hold "${packages[@]}" >/dev/null 2>&1 || apt-mark hold nvidia-container-toolkit >/dev/null

echo "== nvidia-ctk runtime configure --runtime=docker"
# nvidia-ctk edits /etc/docker/daemon.json in place (it reads the file and adds its keys), so the
# keys 10-docker-engine.sh wrote (features.cdi among them) stay; checked below against a copy.
# --cdi.enabled sets "features": {"cdi": true} (Docker >= 25 understands CDI device names;
# https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html).
# The CDI spec itself is not generated here: the build VM has no GPU and /var/run/cdi is emptied
# at every boot, so the appliance's GPU step writes it on the booted VM.
docker_major="$(docker version --format '{{.Server.Version}}' | cut -d. -f1)"
configure=(nvidia-ctk runtime configure --runtime=docker)
if [ "$docker_major" -ge 25 ]; then
    configure+=(--cdi.enabled)
    cdi="enabled"
else
    cdi="unsupported by docker ${docker_major}"
fi
before="$(mktemp)"
if [ -s /etc/docker/daemon.json ]; then cp /etc/docker/daemon.json "$before"; else echo '{}' > "$before"; fi
"${configure[@]}"
systemctl restart docker
python3 - "$before" "$cdi" <<'PY'
import json, sys
before = json.load(open(sys.argv[1]))
after = json.load(open("/etc/docker/daemon.json"))
assert "nvidia" in after.get("runtimes", {}), "nvidia-ctk did not add the nvidia runtime to /etc/docker/daemon.json"
lost = sorted(set(before) - set(after))
assert not lost, f"nvidia-ctk dropped daemon.json keys {lost}"
if sys.argv[2] == "enabled":
    assert after.get("features", {}).get("cdi") is True, "daemon.json lacks \"features\": {\"cdi\": true}"
PY
rm -f "$before"
write_record present "$installed" "docker runtime configured; CDI ${cdi}"
echo "toolkit ${installed} installed from ${source_kind}; CDI ${cdi}"
