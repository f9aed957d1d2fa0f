"""Scenario "GPU passed through" (nox -s test_gpu -- --vfio 0000:e1:00.0[,...]).

Needs a real NVIDIA GPU bound to vfio-pci on a KVM host: without --vfio every
test here is skipped, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import infra_host, status

from appliance_build.vm import appliance

pytestmark = [pytest.mark.vm, pytest.mark.gpu]


@pytest.fixture(scope="module")
def booted(boot_scenario: Any, manifest: dict[str, Any], superlink: Any,
           vfio: tuple[str, ...]) -> Iterator[appliance.BootedAppliance]:  # fmt: skip
    if not vfio:
        pytest.skip("no GPU was passed through: run with --vfio <PCI address> on a KVM host with a vfio-bound GPU")
    if manifest["variant"] != "gpu":
        pytest.skip("GPU passthrough is tested on the GPU image")
    context = {"ONEAPP_FL_SUPERLINK_ADDRESS": superlink.guest_address, "ONEAPP_FL_GPU_ENABLED": "YES"}
    with boot_scenario("gpu-passthrough", context, firmware="uefi", vfio=vfio, memory=8192) as vm:
        yield vm


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance) -> Any:
    return infra_host(booted)


def test_nvidia_smi_lists_the_gpu(host: Any) -> None:
    assert "GPU 0:" in host.check_output("nvidia-smi -L")


def test_validate_gpu_passes(host: Any) -> None:
    result = host.run("/opt/flower/scripts/validate-gpu.sh")
    assert result.rc == 0, result.stdout


def test_container_started_with_gpus_and_sees_the_gpu(host: Any) -> None:
    assert status(host)["gpu"]["FL_GPU_AVAILABLE"] == "YES"
    requests = host.check_output("docker inspect -f '{{json .HostConfig.DeviceRequests}}' flower-supernode")
    assert '"Count":-1' in requests and "gpu" in requests
    assert "GPU 0:" in host.check_output("docker exec flower-supernode nvidia-smi -L")


def test_persistence_daemon_started_with_the_gpu(host: Any) -> None:
    assert status(host)["gpu"]["persistence_daemon"] == "nvidia-persistenced.service started"
    assert host.service("nvidia-persistenced").is_running
