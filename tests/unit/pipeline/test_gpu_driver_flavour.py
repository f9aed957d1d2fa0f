"""gpu.kernel_modules (open by default, proprietary selectable) picks the kernel-module package of
Debian's NVIDIA driver (driver_source = "debian"); the manifest says which flavour, which branch and
that NVIDIA no longer supports it; the toolkit pin is 1.20.x."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance_build import build, config
from appliance_build.errors import ConfigError
from appliance_build.paths import REPO
from appliance_build.stages import render
from appliance_build.stages.toolkit import ToolkitPlan

GPU = """
description = "test image"
variant = "gpu"
provision = ["10-docker-engine.sh", "60-nvidia-driver.sh", "90-cleanup.sh"]
[base]
provider = "{provider}"
components = ["main", "contrib", "non-free", "non-free-firmware"]
extra_packages = [{packages}]
[flower]
version = "{flwr}"
lock = "{lock}"
[gpu]
driver_branch = "{branch}"
{gpu}
"""
REST = '"linux-headers-amd64", "nvidia-smi", "libcuda1", "firmware-nvidia-gsp"'


def load(tmp_path: Path, gpu: str = "", provider: str = "debian-13", packages: str = REST) -> config.ImageConfig:
    lock, branch = ("flwr-1.42.0.txt", "550") if provider == "debian-13" else ("flwr-1.42.0-py311.txt", "535")
    text = GPU.format(provider=provider, packages=packages, flwr="1.42.0", lock=f"locks/{lock}", branch=branch, gpu=gpu)
    (tmp_path / "img.toml").write_text(text)
    return config.load("img", tmp_path)


def test_open_modules_by_default(tmp_path: Path) -> None:
    image = load(tmp_path)
    assert image.gpu is not None and image.gpu.kernel_modules == "open"
    assert image.base.extra_packages == (
        "docker.io",
        "apparmor",
        "docker-cli",  # the suite's engine, installed in the chroot too
        "linux-headers-amd64",
        "nvidia-smi",
        "libcuda1",
        "firmware-nvidia-gsp",  # listed by the definition
        "libnvidia-ml1",
        "libnvidia-ptxjitcompiler1",
        "nvidia-persistenced",
        "nvidia-modprobe",  # the rest of Debian's
        "nvidia-open-kernel-dkms",
    )


def test_proprietary_selectable(tmp_path: Path) -> None:
    image = load(tmp_path, 'kernel_modules = "proprietary"')
    assert image.gpu is not None and image.gpu.kernel_module_package == "nvidia-kernel-dkms"
    assert image.base.extra_packages[-1] == "nvidia-kernel-dkms"
    assert "nvidia-open-kernel-dkms" not in image.base.extra_packages


def test_unknown_flavour_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'gpu.kernel_modules': must be 'open' or 'proprietary', got 'closed'"):
        load(tmp_path, 'kernel_modules = "closed"')


@pytest.mark.parametrize("listed", ["nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "nvidia-kernel-dkms=550.163.01-2"])
def test_kernel_module_package_listed_by_hand_refused(tmp_path: Path, listed: str) -> None:
    with pytest.raises(ConfigError, match=r"key 'base.extra_packages'.*follows gpu.kernel_modules"):
        load(tmp_path, packages=f'{REST}, "{listed}"')


def test_debian_12_needs_proprietary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'gpu.kernel_modules'.*debian-12.*proprietary"):
        load(tmp_path, provider="debian-12")
    image = load(tmp_path, 'kernel_modules = "proprietary"', provider="debian-12")
    assert image.base.extra_packages[-1] == "nvidia-kernel-dkms"


def test_guest_install_adds_no_bootstrap_package_but_tells_the_script(tmp_path: Path) -> None:
    image = load(tmp_path, 'driver_install = "guest"\nkernel_modules = "proprietary"')
    assert "nvidia-kernel-dkms" not in image.base.extra_packages
    env = render.provision_env(image, "flwr-supernode:1.42.0")
    assert env["FLOWER_NVIDIA_KERNEL_MODULES"] == "proprietary" and env["FLOWER_NVIDIA_BRANCH"] == "550"


def test_shipped_gpu_image_offline_installs_the_proprietary_modules() -> None:
    """Debian 13's open 550 package does not build against trixie's current kernel (see the
    definition's comment); the proprietary one does, so it is what the offline route installs."""
    image = config.offline(config.load("supernode-gpu"))
    assert image.gpu is not None and image.gpu.kernel_modules == "proprietary"
    assert image.base.extra_packages.count("nvidia-kernel-dkms") == 1
    assert "nvidia-open-kernel-dkms" not in image.base.extra_packages
    toml = (REPO / "images" / "supernode-gpu.toml").read_text()
    assert '"nvidia-kernel-dkms"' not in toml and '"nvidia-open-kernel-dkms"' not in toml  # one list, derived


def test_toolkit_pinned_to_1_20() -> None:
    shipped = config.load("supernode-gpu").gpu
    assert shipped is not None
    for version in (shipped.toolkit_version, config.GpuConfig().toolkit_version):
        assert re.fullmatch(r"1\.20\.[0-9]+-1", version), version  # NVIDIA's deb version: X.Y.Z-1


def test_manifest_states_branch_flavour_and_support(tmp_path: Path) -> None:
    image = load(tmp_path)
    inventory = {"gpu_driver": {"driver_version": "550.163.01", "module_license": "Dual MIT/GPL"}}
    doc = build.gpu_manifest(image, SimpleNamespace(facts={}), inventory, ToolkitPlan("absent", ""))
    assert doc is not None
    assert doc.driver_branch == "550" and doc.kernel_modules == "open" and doc.driver_source == "debian"
    assert doc.kernel_module_package == "nvidia-open-kernel-dkms" and doc.module_license == "Dual MIT/GPL"
    assert doc.driver_version == "550.163.01"
    assert doc.support_status == "past-support" and doc.support_ends is None
    assert doc.support_note == "NVIDIA no longer supports driver branch R550 (no longer in NVIDIA's lifecycle table)"
    assert doc.toolkit.status == "absent" and doc.toolkit.absent_reason


def test_driver_script_checks_the_flavour() -> None:
    script = (REPO / "provision" / "60-nvidia-driver.sh").read_text()
    assert 'expected_license="Dual MIT/GPL"' in script and 'expected_license="NVIDIA"' in script
    assert "nvidia-open-gpu-kernel-modules" in script  # the open modules' source: versions checked and pinned
