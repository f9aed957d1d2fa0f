"""--vfio: the host pre-check runs validate-host-gpu.sh against (here) a fake root tree
and stops before QEMU starts, with the script's FIX lines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from gpu_scripts_support import GPU, GPU_AUDIO, make_host, set_driver

from appliance_build.errors import BuildError
from appliance_build.vm.host_check import check_vfio_host
from appliance_build.vm.launcher import VirtualMachine, VmSpec


def test_ready_host_passes(tmp_path: Path) -> None:
    sb = make_host(tmp_path)
    report = check_vfio_host((GPU, GPU_AUDIO), root=sb.root, path=f"{sb.bin}:/usr/bin:/bin")
    assert report.errors == 0


def test_gpu_on_nvidia_driver_stops_with_fix_line(tmp_path: Path) -> None:
    sb = make_host(tmp_path)
    set_driver(sb, GPU, "nvidia")
    with pytest.raises(BuildError) as err:
        check_vfio_host((GPU,), root=sb.root, path=f"{sb.bin}:/usr/bin:/bin")
    text = str(err.value)
    assert GPU in text and "FIX:" in text and f"driverctl set-override {GPU} vfio-pci" in text


def test_iommu_off_stops(tmp_path: Path) -> None:
    sb = make_host(tmp_path)
    sb.write("proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz root=/dev/sda2 ro\n")
    with pytest.raises(BuildError, match=r"FIX: .*GRUB_CMDLINE_LINUX_DEFAULT"):
        check_vfio_host((GPU,), root=sb.root, path=f"{sb.bin}:/usr/bin:/bin")


def test_launcher_runs_the_check_before_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = make_host(tmp_path / "host")
    set_driver(sb, GPU, "nouveau")
    monkeypatch.setenv("PATH", f"{sb.bin}:/usr/bin:/bin")
    started: list[object] = []
    monkeypatch.setattr("appliance_build.vm.launcher.qemu_argv", lambda *a, **k: started.append(a))
    vm = VirtualMachine(VmSpec(tmp_path / "img.qcow2", vfio=(GPU,)), tmp_path / "vm", host_root=sb.root)
    with pytest.raises(BuildError, match="not ready to pass"), vm:
        pass
    assert started == [], "QEMU must not start on a host that failed the check"
    assert not (tmp_path / "vm" / "overlay.qcow2").exists()
