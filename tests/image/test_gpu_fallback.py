"""Scenario "gpu requested, none present": FL_GPU_ENABLED=YES on a VM without a GPU.

The rule: a missing GPU is a WARNING, never FATAL. The SuperNode runs on
CPU without --gpus and FL_GPU_AVAILABLE=NO is recorded. On the GPU image the
driver, nvidia-smi and validate-gpu.sh are present, and validate-gpu.sh reports
FAIL with its error count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import guest
import pytest
from guest import Host

from appliance_build.artifacts import Manifest
from appliance_build.vm import appliance

pytestmark = pytest.mark.vm
WARNING = "WARNING: GPU requested but not available, falling back to CPU"


@pytest.fixture(scope="module")
def booted(boot_scenario: Any, superlink: Any, vfio: tuple[str, ...]) -> Iterator[appliance.BootedAppliance]:
    if vfio:
        pytest.skip("a GPU is passed through (--vfio): the no-GPU fallback cannot be observed")
    context = {
        "ONEAPP_FL_SUPERLINK_ADDRESS": superlink.guest_address,
        "FL_GPU_ENABLED": "yes",
        "FL_CUDA_VISIBLE_DEVICES": "0",
    }
    with boot_scenario("gpu-requested-absent", context) as vm:
        yield vm


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance) -> Iterator[Host]:
    with guest.connect(booted) as host:
        yield host


@pytest.fixture
def gpu_image(manifest: Manifest) -> None:
    if manifest.gpu is None:
        pytest.skip("the CPU image carries no NVIDIA driver, nvidia-smi or validate-gpu.sh")


def test_warning_logged_and_gpu_unavailable_recorded(host: Host) -> None:
    assert WARNING in guest.journal(host, "flower-appliance-configure")
    doc = guest.status(host)
    assert doc["gpu"]["FL_GPU_AVAILABLE"] == "NO"
    assert doc["errors"] == [], "a missing GPU is a warning, not an error"
    assert any("GPU requested but not available" in w for w in doc["warnings"])


def test_supernode_runs_on_cpu_without_gpus(host: Host) -> None:
    assert host.service("flower-supernode").is_running
    assert guest.inspect(host, ".HostConfig.DeviceRequests") in (None, [])
    env = guest.container_env(host)
    assert not any("NVIDIA_DRIVER_CAPABILITIES" in item or "CUDA_VISIBLE_DEVICES" in item for item in env)
    assert "--superlink" in guest.container_args(host)


@pytest.mark.usefixtures("gpu_image")
def test_driver_and_tools_are_present(host: Host, manifest: Manifest) -> None:
    assert manifest.gpu is not None and manifest.gpu.module_path
    # the module file the build checked (Debian: nvidia-current.ko, an alias modinfo does not resolve)
    module = manifest.gpu.module_path
    kernel = host.file("/proc/sys/kernel/osrelease").content_string.strip()  # what uname -r prints
    assert module.startswith(f"/lib/modules/{kernel}/")
    assert host.file(module).is_file
    assert host.check_output(f"modinfo -F name {module}") == "nvidia"
    assert host.check_output(f"modinfo -F version {module}") == manifest.gpu.driver_version
    assert host.exists("nvidia-smi")
    assert host.file("/opt/flower/scripts/validate-gpu.sh").mode & 0o111


@pytest.mark.usefixtures("gpu_image")
def test_validate_gpu_reports_failures(host: Host) -> None:
    result = host.run("/opt/flower/scripts/validate-gpu.sh")
    assert result.rc == 1
    assert "[FAIL]" in result.stdout
    assert "GPU validation FAILED:" in result.stdout and "error(s) detected" in result.stdout


@pytest.mark.usefixtures("gpu_image")
def test_nvidia_units_do_not_fail_without_a_gpu(host: Host) -> None:
    # the driver's modules-load.d entry is masked (udev loads nvidia when a GPU is there)
    assert host.file("/etc/modules-load.d/nvidia.conf").linked_to == "/dev/null"
    assert host.service("systemd-modules-load").systemd_properties["ActiveState"] == "active"
    # nvidia-persistenced: not enabled at boot, and a start without a GPU is a skip, not a failure
    assert host.service("nvidia-persistenced").systemd_properties["UnitFileState"] == "disabled"
    host.run("systemctl start nvidia-persistenced")
    persistenced = host.service("nvidia-persistenced").systemd_properties  # read after the start
    assert persistenced["ConditionResult"] == "no"
    assert persistenced["ActiveState"] != "failed"
    assert guest.failed_units(host) == []
