#!/bin/bash
# Packer's shutdown_command: the last thing the build runs. Removes every build
# credential and build-only state, then powers off. Runs as root via sudo.
set -euo pipefail
BUILD_USER="flbuild"

echo "== removing the build user, its key and its sudo rule"
userdel --force --remove "$BUILD_USER" 2>/dev/null || userdel --force "$BUILD_USER"
rm -rf "/home/${BUILD_USER:?}"
rm -f /etc/sudoers.d/90-cloud-init-users

echo "== per-instance identity: host keys, machine-id, hostname, cloud-init state"
# the build VM's name (<image>-build) until OpenNebula's context sets the VM's own
echo localhost > /etc/hostname
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
cloud-init clean --logs --seed
rm -rf /var/lib/cloud/*
# the build VM's rendered network (eni on debian-12, systemd-networkd on debian-13): the
# appliance's first boot renders its own from the OpenNebula context
rm -f /etc/network/interfaces.d/50-cloud-init /etc/netplan/50-cloud-init.yaml /etc/systemd/network/10-cloud-init-*.network
truncate -s 0 /var/log/wtmp /var/log/lastlog /var/log/btmp 2>/dev/null || true

rm -rf /var/tmp/flower-build
sync
systemctl poweroff --no-block
