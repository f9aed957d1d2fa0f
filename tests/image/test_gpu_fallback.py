"""Scenario "gpu requested, none present": FL_GPU_ENABLED=YES on a VM without a GPU.

The seeds' rule: a missing GPU is a WARNING, never FATAL. The SuperNode runs on
CPU without --gpus and FL_GPU_AVAILABLE=NO is recorded. On the GPU image the
driver, nvidia-smi and validate-gpu.sh are present, and validate-gpu.sh reports
FAIL with its error count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import docker_args, infra_host, status

from appliance_build.artifacts import Manifest
from appliance_build.vm import appliance

pytestmark = pytest.mark.vm
WARNING = "WARNING: GPU requested but not available, falling back to CPU"


@pytest.fixture(scope="module")
def booted(boot_scenario: Any, superlink: Any, vfio: tuple[str, ...]) -> Iterator[appliance.BootedAppliance]:
    if vfio:
        pytest.skip("a GPU is passed through (--vfio): the no-GPU fallback cannot be observed")
    context = {"ONEAPP_FL_SUPERLINK_ADDRESS": superlink.guest_address, "FL_GPU_ENABLED": "yes",
               "FL_CUDA_VISIBLE_DEVICES": "0"}  # fmt: skip
    with boot_scenario("gpu-requested-absent", context) as vm:
        yield vm


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance) -> Any:
    return infra_host(booted)


@pytest.fixture
def gpu_image(manifest: Manifest) -> None:
    if manifest.gpu is None:
        pytest.skip("the CPU image carries no NVIDIA driver, nvidia-smi or validate-gpu.sh")


def test_warning_logged_and_gpu_unavailable_recorded(host: Any) -> None:
    journal = host.run("journalctl -b -u flower-appliance-configure --no-pager -o cat").stdout
    assert WARNING in journal
    doc = status(host)
    assert doc["gpu"]["FL_GPU_AVAILABLE"] == "NO"
    assert doc["errors"] == [], "a missing GPU is a warning, not an error"
    assert any("GPU requested but not available" in w for w in doc["warnings"])


def test_supernode_runs_on_cpu_without_gpus(host: Any) -> None:
    assert host.service("flower-supernode").is_running
    args = host.check_output("docker inspect -f '{{json .HostConfig.DeviceRequests}}' flower-supernode")
    assert args in ("null", "[]")
    env = host.check_output("docker inspect -f '{{json .Config.Env}}' flower-supernode")
    assert "NVIDIA_DRIVER_CAPABILITIES" not in env and "CUDA_VISIBLE_DEVICES" not in env
    assert "--superlink" in docker_args(host)


@pytest.mark.usefixtures("gpu_image")
def test_driver_and_tools_are_present(host: Any, manifest: Manifest) -> None:
    assert manifest.gpu is not None and manifest.gpu.module_path
    # the module file the build checked (Debian: nvidia-current.ko, an alias modinfo does not resolve)
    module = manifest.gpu.module_path
    assert module.startswith(f"/lib/modules/{host.check_output('uname -r')}/")
    assert host.check_output(f"modinfo -F name {module}") == "nvidia"
    assert host.check_output(f"modinfo -F version {module}") == manifest.gpu.driver_version
    assert host.exists("nvidia-smi")
    assert host.file("/opt/flower/scripts/validate-gpu.sh").mode & 0o111


@pytest.mark.usefixtures("gpu_image")
def test_validate_gpu_reports_failures(host: Any) -> None:
    result = host.run("/opt/flower/scripts/validate-gpu.sh")
    assert result.rc == 1
    assert "[FAIL]" in result.stdout
    assert "GPU validation FAILED:" in result.stdout and "error(s) detected" in result.stdout


@pytest.mark.usefixtures("gpu_image")
def test_nvidia_units_do_not_fail_without_a_gpu(host: Any) -> None:
    # the driver's modules-load.d entry is masked (udev loads nvidia when a GPU is there)
    assert host.file("/etc/modules-load.d/nvidia.conf").linked_to == "/dev/null"
    assert host.run("systemctl is-failed systemd-modules-load").stdout.strip() == "active"
    # nvidia-persistenced: not enabled at boot, and a start without a GPU is a skip, not a failure
    assert host.run("systemctl is-enabled nvidia-persistenced").stdout.strip() == "disabled"
    host.run("systemctl start nvidia-persistenced")
    assert host.check_output("systemctl show -p ConditionResult --value nvidia-persistenced") == "no"
    assert host.run("systemctl is-failed nvidia-persistenced").stdout.strip() != "failed"
    assert host.run("systemctl list-units --failed --no-legend --plain").stdout.strip() == ""
