#!/bin/bash
# 50: the appliance runtime: reads the OpenNebula context at boot, validates FL_* variables,
# detects the GPU and runs the SuperNode container (supernode_runtime, systemd units, CLI).
set -euo pipefail
: "${FLOWER_UPLOAD:?}"

install -d -m 0755 /opt/flower/lib /opt/flower/scripts /etc/flower
# what this build was (image, flwr, container tag, time): written by every build, read by the
# inventory and by `flower-appliance`
install -m 0644 "${FLOWER_UPLOAD}/build.json" /etc/flower/build.json
rm -rf /opt/flower/lib/supernode_runtime
cp -r "${FLOWER_UPLOAD}/supernode_runtime" /opt/flower/lib/supernode_runtime
find /opt/flower/lib/supernode_runtime -name '__pycache__' -prune -exec rm -rf {} +
chown -R root:root /opt/flower/lib
python3 -m compileall -q /opt/flower/lib/supernode_runtime

install -m 0755 /opt/flower/lib/supernode_runtime/bin/flower-appliance /usr/local/bin/flower-appliance

# cloud-init (OpenNebula datasource) keeps /etc/hosts in step with the context hostname.
cat > /etc/cloud/cloud.cfg.d/95-flower-appliance.cfg <<'CFG'
manage_etc_hosts: true
CFG

for unit in /opt/flower/lib/supernode_runtime/systemd/*.service; do
    install -m 0644 "$unit" /etc/systemd/system/
done
systemctl daemon-reload
for unit in /opt/flower/lib/supernode_runtime/systemd/*.service; do
    systemctl enable "$(basename "$unit")"
done
flower-appliance variables --markdown > /opt/flower/CONTEXT-VARIABLES.md
echo "appliance runtime installed: $(ls /opt/flower/lib/supernode_runtime/systemd)"
