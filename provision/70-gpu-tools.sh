#!/bin/bash
# 70: GPU tools in the image: validate-gpu.sh (the seeds' five in-VM checks) and the toolkit
# installer for later air-gapped installs; the persistence daemon keeps the GPU initialised.
set -euo pipefail
: "${FLOWER_UPLOAD:?}"
install -d -m 0755 /opt/flower/scripts
install -m 0755 "${FLOWER_UPLOAD}/scripts/validate-gpu.sh" /opt/flower/scripts/validate-gpu.sh
install -m 0755 "${FLOWER_UPLOAD}/provision/65-nvidia-container-toolkit.sh" \
    /opt/flower/scripts/install-container-toolkit.sh
if systemctl list-unit-files nvidia-persistenced.service >/dev/null 2>&1; then
    systemctl enable nvidia-persistenced.service
fi
/opt/flower/scripts/validate-gpu.sh --help >/dev/null
echo "installed: $(ls /opt/flower/scripts)"
