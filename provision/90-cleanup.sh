#!/bin/bash
# 90: clean-up and hardening. What a published image must not carry from its build.
# (The build user itself is removed by finalize.sh, the very last command.)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

echo "== sshd: keys only, no passwords"
install -d -m 0755 /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/10-flower-appliance.conf <<'CONF'
# Flower appliance: key-based login only (OpenNebula context SSH_PUBLIC_KEY).
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PermitEmptyPasswords no
CONF
sshd -t

echo "== root password locked"
passwd --lock root

echo "== package caches"
apt-get -y -q autoremove --purge
apt-get clean
rm -rf /var/lib/apt/lists/*

echo "== logs and build traces"
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -f /root/.bash_history /root/.lesshst
rm -rf /tmp/* /var/tmp/systemd-private-* /var/lib/docker/tmp/*

echo "== trim free space"
fstrim -av || echo "fstrim unsupported here; the compressed qcow2 is larger but correct"
