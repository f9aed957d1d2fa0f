"""Scenario "toolkit-local-fixture" (GPU image only): the air-gapped Container Toolkit route, in the image.

An image built without a toolkit source carries /opt/flower/scripts/install-container-toolkit.sh
(the build's own 65-nvidia-container-toolkit.sh). This boots such an image on a throw-away
overlay, hands the installer the TEST FIXTURE packages from tests/fixtures/toolkit_debs.py
(real package names, version 0.0.0~flower.test.fixture, an nvidia-ctk that only edits
daemon.json) and checks what the local route does to a real guest: apt installs them, they
are held, Docker gets the nvidia runtime and restarts, the record says `present`, and the
SuperNode comes back. The fixtures never reach the built file (the overlay is discarded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import guest
import pytest
from guest import Host

from appliance_build.artifacts import Manifest
from appliance_build.cache import file_sha256
from appliance_build.vm import appliance
from tests.fixtures import toolkit_debs

pytestmark = pytest.mark.vm
INSTALLER = "/opt/flower/scripts/install-container-toolkit.sh"
UPLOAD = "/root/toolkit-fixture-upload"


@pytest.fixture(scope="module")
def booted(
    boot_scenario: Any, superlink: Any, manifest: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[appliance.BootedAppliance]:
    if manifest.gpu is None:
        pytest.skip("the CPU image has no Container Toolkit installer")
    if manifest.gpu.toolkit.status != "absent":
        pytest.skip("this image already carries a Container Toolkit; the fixture route would replace it")
    debs = toolkit_debs.build(tmp_path_factory.mktemp("toolkit-fixture"))
    context = {"ONEAPP_FL_SUPERLINK_ADDRESS": superlink.guest_address}
    with boot_scenario("toolkit-local-fixture", context) as vm:
        vm.put(debs, f"{UPLOAD}/toolkit")
        yield vm


@pytest.fixture(scope="module")
def installed(booted: appliance.BootedAppliance) -> dict[str, Any]:
    """Run the installer once; its exit code and output are what the tests look at."""
    code, out, err = booted.run(f"FLOWER_TOOLKIT_SOURCE=local FLOWER_UPLOAD={UPLOAD} {INSTALLER}", timeout=600)
    return {"rc": code, "out": out, "err": err}


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance, installed: dict[str, Any]) -> Iterator[Host]:
    with guest.connect(booted) as host:
        yield host


def test_installer_succeeds(installed: dict[str, Any]) -> None:
    assert installed["rc"] == 0, installed["out"][-2000:] + installed["err"][-2000:]
    assert f"toolkit {toolkit_debs.FIXTURE_VERSION} installed from local" in installed["out"]


def test_packages_installed_and_held(host: Host) -> None:
    for name in toolkit_debs.PACKAGES:
        package = host.package(name)
        assert package.is_installed and package.version == toolkit_debs.FIXTURE_VERSION
    held = host.check_output("apt-mark showhold").split()
    assert set(toolkit_debs.PACKAGES) <= set(held)


def test_docker_has_nvidia_runtime(host: Host) -> None:
    runtimes = guest.docker_info(host, ".Runtimes")
    assert "nvidia" in runtimes
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"


def test_record_says_present(host: Host) -> None:
    record = json.loads(host.file("/etc/flower/gpu-toolkit.json").content_string)
    assert record["toolkit"] == "present" and record["source"] == "local"
    assert record["version"] == toolkit_debs.FIXTURE_VERSION


def test_supernode_back_after_docker_restart(booted: appliance.BootedAppliance, host: Host) -> None:
    assert host.service("docker").is_running
    assert booted.wait_until_ready(timeout=300) is not None, "the SuperNode container did not come back"


def test_local_route_without_debs_fails_clearly(host: Host) -> None:
    result = host.run(f"FLOWER_TOOLKIT_SOURCE=local FLOWER_UPLOAD=/nonexistent {INSTALLER}")
    assert result.rc == 1 and "no .deb files in /nonexistent/toolkit" in result.stderr


def test_built_image_unchanged(image_file: Path, booted: appliance.BootedAppliance) -> None:
    # the VM ran on an overlay: the built file's checksum is still the one the build wrote
    sha_file = image_file.with_name(image_file.name + ".sha256")
    assert sha_file.read_text().split()[0] == file_sha256(image_file)
