"""A real boot: the debian-12 base (built or taken from the cache) reaches an SSH
login under SeaBIOS and under OVMF, with a key injected at boot by cloud-init."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance_build.build import choose_accelerator
from appliance_build.config import BaseConfig
from appliance_build.stages import base
from appliance_build.vm import isos
from appliance_build.vm.launcher import VirtualMachine, VmSpec, new_key, public_line

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> base.BaseImage:
    logs = Path("build/test-results/base-logs").resolve()
    return base.ensure(BaseConfig(provider="debian-12"), logs)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_base_boots_to_ssh_with_injected_key(base_image: base.BaseImage, firmware: str, tmp_path: Path) -> None:
    key = new_key()
    user_data = (
        "#cloud-config\nusers:\n  - name: tester\n    lock_passwd: true\n"
        f"    sudo: 'ALL=(ALL) NOPASSWD:ALL'\n    ssh_authorized_keys: ['{public_line(key)}']\n"
    )
    seed = isos.nocloud_iso(tmp_path / "seed.iso", user_data, "instance-id: base-test\n")
    spec = VmSpec(base_image.disk, firmware=firmware, machine="q35", accel=choose_accelerator(base_image.disk),
                  cdroms=(seed,))  # fmt: skip
    before = base_image.disk.stat().st_mtime
    with VirtualMachine(spec, tmp_path / "vm") as vm:
        seconds = vm.wait_for_ssh(key, user="tester", timeout=900)
        probe = "cat /proc/cmdline; test -d /sys/firmware/efi && echo EFI || echo BIOS; sudo -n id -u"
        code, out, _ = vm.run(key, probe,
                              user="tester")  # fmt: skip
        print(f"{firmware}: SSH login after {seconds:.0f} s")
    assert code == 0
    assert ("EFI" if firmware == "uefi" else "BIOS") in out.splitlines()
    assert out.splitlines()[-1] == "0"
    assert "console=ttyS0" in out
    assert base_image.disk.stat().st_mtime == before, "the base must only ever be a backing file"
    assert not vm.running()
