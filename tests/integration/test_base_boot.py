"""A real boot: the debian-13 base (built or taken from the cache) reaches an SSH
login under SeaBIOS and under OVMF, with a key injected at boot by cloud-init, its
network up through systemd-networkd; the debian-12 base under SeaBIOS (three boots
of about a minute each under TCG)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance_build.artifacts import BuildTree
from appliance_build.config import BaseConfig
from appliance_build.stages import base
from appliance_build.vm import accel as accel_probe
from appliance_build.vm import isos
from appliance_build.vm.launcher import VirtualMachine, VmSpec, boot_to_ssh, new_key, public_line

pytestmark = pytest.mark.vm

NETWORKD_PROBE = (
    "systemctl is-active systemd-networkd systemd-resolved; readlink /etc/resolv.conf; "
    "ls /etc/systemd/network; resolvectl dns"
)


@pytest.fixture(scope="module")
def bases() -> Callable[[str], base.BaseImage]:
    logs = (BuildTree.default().test_results / "base-logs").resolve()
    return functools.cache(lambda provider: base.ensure(BaseConfig(provider=provider), logs))


# Debian 13 (the default) under both firmwares; Debian 12 (same disk recipe) under one.
BOOTS = [("debian-13", "bios"), ("debian-13", "uefi"), ("debian-12", "bios")]


@pytest.mark.parametrize(("provider", "firmware"), BOOTS)
def test_base_boots_to_ssh_with_injected_key(
    bases: Callable[[str], base.BaseImage], provider: str, firmware: str, tmp_path: Path
) -> None:
    base_image = bases(provider)
    key = new_key()
    user_data = (
        "#cloud-config\nusers:\n  - name: tester\n    lock_passwd: true\n"
        f"    sudo: 'ALL=(ALL) NOPASSWD:ALL'\n    ssh_authorized_keys: ['{public_line(key)}']\n"
    )
    seed = isos.nocloud_iso(tmp_path / "seed.iso", user_data, "instance-id: base-test\n")
    spec = VmSpec(
        base_image.disk, firmware=firmware, machine="q35", accel=accel_probe.for_disk(base_image.disk), cdroms=(seed,)
    )
    before = base_image.disk.stat().st_mtime
    with VirtualMachine(spec, tmp_path / "vm") as vm:
        seconds = boot_to_ssh(vm, key, user="tester", timeout=900)
        probe = "cat /proc/cmdline; test -d /sys/firmware/efi && echo EFI || echo BIOS; sudo -n id -u"
        code, out, _ = vm.run(key, probe, user="tester")
        net_code, net, net_err = vm.run(key, NETWORKD_PROBE, user="tester")
        print(f"{provider} {firmware}: SSH login after {seconds:.0f} s")
    assert code == 0
    assert ("EFI" if firmware == "uefi" else "BIOS") in out.splitlines()
    assert out.splitlines()[-1] == "0"
    assert "console=ttyS0" in out
    if provider == "debian-13":
        # cloud-init rendered systemd-networkd's unit; resolved holds the DHCP-given DNS server
        # (QEMU user networking's 10.0.2.3) and /etc/resolv.conf is its stub
        assert net_code == 0, net + net_err
        assert "active\nactive\n" in net and "/run/systemd/resolve/stub-resolv.conf" in net
        assert "10-cloud-init-" in net and "10.0.2.3" in net
    assert base_image.disk.stat().st_mtime == before, "the base must only ever be a backing file"
    assert not vm.running()
