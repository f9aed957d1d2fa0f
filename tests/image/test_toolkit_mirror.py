"""Scenario "toolkit-mirror-fixture" (GPU image only): the Container Toolkit's repository route, in the image.

The image's own installer (/opt/flower/scripts/install-container-toolkit.sh, the build's
65-nvidia-container-toolkit.sh) runs the `mirror` route against a signed apt repository made
for this run on the host (tests/fixtures/apt_mirror.py: a throw-away key, the TEST FIXTURE
toolkit packages of tests/fixtures/toolkit_debs.py, served on 127.0.0.1, which the guest
reaches as 10.0.2.2 through QEMU's user networking). What the route does to a real guest: the
key is checked against its pinned fingerprint, apt verifies InRelease, the exact version is
pinned and installed, the packages are held, Docker gets the nvidia runtime. Refusals: a key
with another fingerprint, and an unsigned repository. The VM runs on a throw-away overlay.
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
from tests.fixtures import apt_mirror, toolkit_debs

pytestmark = pytest.mark.vm
INSTALLER = "/opt/flower/scripts/install-container-toolkit.sh"
UPLOAD = "/root/toolkit-mirror-upload"
GUEST_HOST = "10.0.2.2"  # the host, seen from QEMU's user-mode network (qemu-system(1), "-netdev user")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("toolkit-mirror")
    key = apt_mirror.ThrowawayKey.create(tmp / "gnupg")
    debs = toolkit_debs.build(tmp / "debs")
    signed = apt_mirror.build_flat_repository(tmp / "signed", debs, key)
    unsigned = apt_mirror.build_flat_repository(tmp / "unsigned", debs, None)
    with apt_mirror.serve(signed) as url, apt_mirror.serve(unsigned) as unsigned_url:
        yield {
            "url": url.replace("127.0.0.1", GUEST_HOST),
            "unsigned_url": unsigned_url.replace("127.0.0.1", GUEST_HOST),
            "key": key,
            "key_file": signed / "fixture-key.asc",
        }


@pytest.fixture(scope="module")
def booted(
    boot_scenario: Any, superlink: Any, manifest: Manifest, mirror: dict[str, Any]
) -> Iterator[appliance.BootedAppliance]:
    if manifest.gpu is None:
        pytest.skip("the CPU image has no Container Toolkit installer")
    if manifest.gpu.toolkit.status != "absent":
        pytest.skip("this image already carries a Container Toolkit; the fixture route would replace it")
    context = {"ONEAPP_FL_SUPERLINK_ADDRESS": superlink.guest_address}
    with boot_scenario("toolkit-mirror-fixture", context) as vm:
        staged = mirror["key_file"].with_name("nvidia-container-toolkit.asc")
        staged.write_bytes(mirror["key_file"].read_bytes())
        vm.put([staged], f"{UPLOAD}/toolkit")
        yield vm


def installer(url: str, fingerprint: str) -> str:
    return (
        f"FLOWER_TOOLKIT_SOURCE=mirror FLOWER_UPLOAD={UPLOAD} FLOWER_TOOLKIT_REPO={url} "
        f"FLOWER_TOOLKIT_VERSION={toolkit_debs.FIXTURE_VERSION} FLOWER_TOOLKIT_KEY_FINGERPRINT={fingerprint} "
        f"{INSTALLER}"
    )


@pytest.fixture(scope="module")
def refusals(booted: appliance.BootedAppliance, mirror: dict[str, Any]) -> dict[str, tuple[int, str, str]]:
    """The refusals run first, on the untouched guest."""
    return {
        "other-fingerprint": booted.run(installer(mirror["url"], "0" * 40), timeout=300),
        "unsigned": booted.run(installer(mirror["unsigned_url"], mirror["key"].fingerprint), timeout=300),
    }


@pytest.fixture(scope="module")
def installed(
    booted: appliance.BootedAppliance, mirror: dict[str, Any], refusals: dict[str, tuple[int, str, str]]
) -> dict[str, Any]:
    code, out, err = booted.run(installer(mirror["url"], mirror["key"].fingerprint), timeout=600)
    return {"rc": code, "out": out, "err": err}


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance, installed: dict[str, Any]) -> Iterator[Host]:
    with guest.connect(booted) as host:
        yield host


def test_refuses_a_key_with_another_fingerprint(refusals: dict[str, tuple[int, str, str]]) -> None:
    code, _, err = refusals["other-fingerprint"]
    assert code == 1 and "toolkit repository key fingerprint mismatch: expected " + "0" * 40 in err


def test_refuses_an_unsigned_repository(refusals: dict[str, tuple[int, str, str]]) -> None:
    code, _, err = refusals["unsigned"]
    assert code == 1 and "(unsigned, wrong key or unreachable)" in err
    assert "is not signed" in err  # apt's own words, passed on


def test_installer_succeeds_from_the_mirror(installed: dict[str, Any]) -> None:
    assert installed["rc"] == 0, installed["out"][-2000:] + installed["err"][-2000:]
    assert f"toolkit {toolkit_debs.FIXTURE_VERSION} installed from mirror" in installed["out"]


def test_source_key_and_pin_in_the_guest(host: Host, mirror: dict[str, Any]) -> None:
    source = host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.list").content_string
    assert source == f"deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit.asc] {mirror['url']} /\n"
    pin = host.file("/etc/apt/preferences.d/flower-nvidia-container-toolkit").content_string
    assert f"Pin: version {toolkit_debs.FIXTURE_VERSION}\nPin-Priority: 1001" in pin
    policy = host.check_output("apt-cache policy nvidia-container-toolkit")
    assert f"Candidate: {toolkit_debs.FIXTURE_VERSION}" in policy
    # apt names a flat repository by its URL without the trailing slash: "500 http://10.0.2.2:PORT  Packages"
    assert f"{mirror['url'].rstrip('/')}  Packages" in policy


def test_packages_installed_at_the_pinned_version_and_held(host: Host) -> None:
    for name in toolkit_debs.PACKAGES:
        package = host.package(name)
        assert package.is_installed and package.version == toolkit_debs.FIXTURE_VERSION
    assert set(toolkit_debs.PACKAGES) <= set(host.check_output("apt-mark showhold").split())


def test_docker_has_nvidia_runtime_and_record_says_mirror(host: Host) -> None:
    runtimes = guest.docker_info(host, ".Runtimes")
    assert "nvidia" in runtimes
    record = json.loads(host.file("/etc/flower/gpu-toolkit.json").content_string)
    assert record["toolkit"] == "present" and record["source"] == "mirror"
    assert record["version"] == toolkit_debs.FIXTURE_VERSION


def test_built_image_unchanged(image_file: Path, booted: appliance.BootedAppliance) -> None:
    sha_file = image_file.with_name(image_file.name + ".sha256")
    assert sha_file.read_text().split()[0] == file_sha256(image_file)
