#!/bin/bash
# 70: GPU tools in the image: validate-gpu.sh (the in-VM GPU checks, see its header) and the toolkit
# installer for later air-gapped installs; the persistence daemon only where a GPU is.
set -euo pipefail
: "${FLOWER_UPLOAD:?}"
install -d -m 0755 /opt/flower/scripts
install -m 0755 "${FLOWER_UPLOAD}/scripts/validate-gpu.sh" /opt/flower/scripts/validate-gpu.sh
install -m 0755 "${FLOWER_UPLOAD}/provision/65-nvidia-container-toolkit.sh" \
    /opt/flower/scripts/install-container-toolkit.sh
# nvidia-persistenced keeps the GPU initialised between jobs, but fails on a VM without a GPU:
# not enabled at boot; the appliance's GPU detection step starts it once a GPU is found, and
# the condition keeps any other start on a GPU-less VM a skip, never a failed unit.
if systemctl list-unit-files nvidia-persistenced.service >/dev/null 2>&1; then
    systemctl disable nvidia-persistenced.service
    install -d -m 0755 /etc/systemd/system/nvidia-persistenced.service.d
    cat > /etc/systemd/system/nvidia-persistenced.service.d/flower-gpu-only.conf <<'UNIT'
# Flower appliance: only with a GPU bound to the nvidia driver; started by flower-appliance-configure.
[Unit]
ConditionPathExistsGlob=/sys/bus/pci/drivers/nvidia/0000:*
UNIT
fi
/opt/flower/scripts/validate-gpu.sh --help >/dev/null
echo "installed: $(ls /opt/flower/scripts)"
