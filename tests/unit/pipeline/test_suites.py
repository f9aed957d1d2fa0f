"""debian-12 and debian-13: one base recipe and one container recipe, parametrised by the
suite; the definition accepts both and refuses a lock made for another Python."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from appliance_build import config, plan, suites
from appliance_build.artifacts import ImageArtifacts
from appliance_build.config import BaseConfig, FlowerConfig
from appliance_build.errors import ConfigError
from appliance_build.stages import base, container, render
from appliance_build.stages.base import debian
from appliance_build.stages.base.disk_layout import Layout

DEFINITION = """
description = "test image"
variant = "cpu"
provision = ["10-docker-engine.sh", "90-cleanup.sh"]
[base]
provider = "{provider}"
[flower]
version = "{flwr}"
lock = "{lock}"
"""
BOOKWORM = BaseConfig(provider="debian-12")
TRIXIE = BaseConfig(provider="debian-13")


# flwr 1.42.0's lock for each suite's python3 (numpy 2.5 in the cp313 lock needs 3.12+)
LOCKS = {"debian-13": "locks/flwr-1.42.0.txt", "debian-12": "locks/flwr-1.42.0-py311.txt"}


def load(tmp_path: Path, provider: str, flwr: str, extra: str = "", lock: str = "") -> config.ImageConfig:
    text = DEFINITION.format(provider=provider, flwr=flwr, lock=lock or f"locks/flwr-{flwr}.txt")
    (tmp_path / "img.toml").write_text(text + extra)
    return config.load("img", tmp_path)


# --- the definition ---------------------------------------------------------------------


def test_shipped_definitions_default_to_debian_13_and_flwr_1_42() -> None:
    for name in ("supernode-cpu", "supernode-gpu"):
        image = config.load(name)
        assert image.base.provider == "debian-13"
        assert (image.flower.version, image.flower.lock) == ("1.42.0", "locks/flwr-1.42.0.txt")
        assert image.flower.image_tag == "flwr-supernode:1.42.0"


@pytest.mark.parametrize("provider", ["debian-13", "debian-12"])
def test_both_debian_providers_accepted(tmp_path: Path, provider: str) -> None:
    image = load(tmp_path, provider, "1.42.0", lock=LOCKS[provider])
    assert image.base.provider == provider and image.flower.version == "1.42.0"


def test_shipped_debian_12_cpu_image() -> None:
    """supernode-cpu on Debian 12 with the same flwr as the Debian 13 images (the host's
    SuperLink is 1.42.0), from the lock resolved for bookworm's Python 3.11."""
    old, new = config.load("supernode-cpu-debian12"), config.load("supernode-cpu")
    assert old.base.provider == "debian-12" and old.variant == "cpu" and "Debian 12" in old.description
    assert (old.flower.version, old.flower.lock) == ("1.42.0", "locks/flwr-1.42.0-py311.txt")
    assert old.flower.image_tag == new.flower.image_tag == "flwr-supernode:1.42.0"
    # everything else is the CPU image's
    assert replace(old.base, provider=new.base.provider, extra_packages=new.base.extra_packages) == new.base
    # the chroot installs each suite's own engine: docker-cli is its own package from Debian 13 on
    assert old.base.extra_packages == ("docker.io", "apparmor", *old.packages)
    assert new.base.extra_packages == ("docker.io", "apparmor", "docker-cli", *new.packages)
    assert (old.disk, old.vm, old.packages, old.provision, old.files, old.gpu) == (
        new.disk,
        new.vm,
        new.packages,
        new.provision,
        new.files,
        new.gpu,
    )


def test_gpu_bootstrap_route_on_debian_13(tmp_path: Path) -> None:
    (tmp_path / "img.toml").write_text(
        DEFINITION.format(provider="debian-13", flwr="1.42.0", lock=LOCKS["debian-13"]).replace('"cpu"', '"gpu"')
        + "[gpu]\ndriver_branch = '550'\n"
    )
    gpu = config.load("img", tmp_path).gpu
    assert gpu is not None and (gpu.driver_install, gpu.driver_branch) == ("bootstrap", "550")
    shipped = config.load("supernode-gpu")
    assert shipped.gpu is not None and shipped.gpu.driver_branch == "580" and shipped.base.provider == "debian-13"
    assert config.offline(shipped).gpu.driver_branch == "550"  # type: ignore[union-attr]  # Debian 13 packages 550


def test_unknown_provider_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "debian-14", "1.42.0")
    assert "key 'base.provider'" in str(err.value)
    assert all(f"'{p}'" in str(err.value) for p in ("debian-12", "debian-13", "ubuntu-24.04"))


def test_lock_for_another_python_is_refused(tmp_path: Path) -> None:
    """The 1.42.0 lock is resolved for CPython 3.13 (numpy 2.5 needs 3.12+): Debian 12's 3.11
    container cannot install it, and the definition says so before anything is built."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "debian-12", "1.42.0")
    message = str(err.value)
    assert "key 'flower.lock'" in message and "Python 3.13" in message and "bookworm's Python 3.11" in message
    # and the other way round: the py311 lock is not for trixie's 3.13
    with pytest.raises(ConfigError, match=r"Python 3\.11, but .* trixie's Python 3\.13"):
        load(tmp_path, "debian-13", "1.42.0", lock=LOCKS["debian-12"])


# --- the base recipe --------------------------------------------------------------------


def test_base_inputs_per_suite() -> None:
    old, new = debian.inputs(BOOKWORM), debian.inputs(TRIXIE)
    assert (old["provider"], old["suite"]) == ("debian-12", "bookworm")
    assert (new["provider"], new["suite"]) == ("debian-13", "trixie")
    assert base.cache_entry(BOOKWORM)[0] != base.cache_entry(TRIXIE)[0]
    assert base.cache_entry(TRIXIE)[1].name.startswith("debian-13-")
    # debian-12 keeps the bookworm-only recipe's inputs (and so its cache entries)
    assert "networkd" not in old and old["packages"] == debian.PACKAGES
    assert {"ifupdown", "isc-dhcp-client"} <= set(old["packages"])
    # debian-13: cloud-init's networkd renderer, no ifupdown or ISC DHCP client
    assert not {"ifupdown", "isc-dhcp-client"} & set(new["packages"])
    assert "systemd-resolved" in new["packages"] and "networkd" in new
    assert set(new["packages"]) - {"systemd-resolved"} < set(debian.PACKAGES)


def test_networkd_cloud_config_pins_the_renderer() -> None:
    cfg = yaml.safe_load(debian.NETWORKD_CLOUD_CFG)
    assert cfg == {"system_info": {"network": {"renderers": ["networkd"]}}}


def _layout() -> Layout:
    return Layout(
        esp_mib=128, root_mib=3072, root_uuid="0" * 8 + "-0000-4000-8000-" + "0" * 12, esp_volume_id="abcd1234"
    )


@pytest.mark.parametrize("provider", ["debian-12", "debian-13"])
def test_configure_writes_the_suites_networking(tmp_path: Path, provider: str) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/resolv.conf").write_text("nameserver 192.0.2.53\n")  # what mmdebstrap copies in
    debian._configure(root, _layout(), suites.SUITES[provider])
    assert (root / "etc/cloud/cloud.cfg.d/90-flower-base.cfg").is_file()
    networkd = root / "etc/cloud/cloud.cfg.d/91-flower-networkd.cfg"
    if provider == "debian-13":
        assert networkd.read_text() == debian.NETWORKD_CLOUD_CFG
        assert (root / "etc/resolv.conf").is_symlink()
        assert str((root / "etc/resolv.conf").readlink()) == "../run/systemd/resolve/stub-resolv.conf"
        assert not (root / "etc/network/interfaces").exists()
    else:
        assert not networkd.exists()
        assert "iface lo inet loopback" in (root / "etc/network/interfaces").read_text()


@pytest.mark.parametrize("provider", ["debian-12", "debian-13"])
def test_bootstrap_command_per_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(debian, "run", lambda argv, *a, **k: calls.append(argv))
    monkeypatch.setattr(debian, "say", lambda *a, **k: None)
    (tmp_path / "root").mkdir()
    base_config = BaseConfig(provider=provider)
    debian._bootstrap(base_config, tmp_path / "root", tmp_path / "log")
    (argv,) = calls
    codename = suites.SUITES[provider].codename
    assert argv[argv.index(str(tmp_path / "root")) - 1] == codename
    assert f"deb http://deb.debian.org/debian {codename} main" in argv
    assert f"deb http://deb.debian.org/debian-security {codename}-security main" in argv
    include = next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(",")
    assert include == [*debian.packages(suites.SUITES[provider]), "linux-image-amd64"]
    hook = f"--customize-hook={debian.NETWORKD_HOOK}"
    assert (hook in argv) == (provider == "debian-13")


# --- the container ----------------------------------------------------------------------


FLOWER = FlowerConfig(version="1.42.0", lock="locks/flwr-1.42.0.txt")


@pytest.mark.parametrize(
    ("provider", "codename", "python", "newest"),
    [
        ("debian-12", "bookworm", "3.11", "manylinux_2_36_x86_64"),
        ("debian-13", "trixie", "3.13", "manylinux_2_41_x86_64"),
        # the container is Debian whatever the base; on another base, the current stable
        ("ubuntu-24.04", "trixie", "3.13", "manylinux_2_41_x86_64"),
    ],
)
def test_container_inputs_follow_the_base(provider: str, codename: str, python: str, newest: str) -> None:
    found = container.inputs(FLOWER, BaseConfig(provider=provider))
    assert (found["suite"], found["python"]) == (codename, python)
    assert found["platforms"][0] == newest
    assert found["platforms"][-2:] == ["manylinux2014_x86_64", "linux_x86_64"]
    assert "manylinux_2_17_x86_64" in found["platforms"] and "manylinux_2_16_x86_64" not in found["platforms"]


def test_container_cache_key_changes_with_the_suite() -> None:
    def key(b: BaseConfig) -> str:
        return container.cache.inputs_hash(container.inputs(FLOWER, b))

    assert key(BOOKWORM) != key(TRIXIE)
    assert key(TRIXIE) == key(replace(TRIXIE, root_size="6G"))  # only what the container uses


def test_container_sources_have_updates_and_security() -> None:
    assert container.sources(TRIXIE, suites.SUITES["debian-13"]) == [
        "deb http://deb.debian.org/debian trixie main",
        "deb http://deb.debian.org/debian trixie-updates main",
        "deb http://deb.debian.org/debian-security trixie-security main",
    ]


@pytest.mark.parametrize("provider", ["debian-12", "debian-13"])
def test_wheels_downloaded_for_the_suites_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], *args: Any, **kwargs: Any) -> None:
        calls.append(argv)

    monkeypatch.setattr(container, "run", fake_run)
    suite = suites.SUITES[provider]
    container.download_wheels(tmp_path / "lock.txt", suite, tmp_path / "wheels", tmp_path / "log")
    (argv,) = calls
    assert argv[argv.index("--python-version") + 1] == suite.python
    assert "--require-hashes" in argv and "--only-binary=:all:" in argv
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert platforms == suite.manylinux_platforms


# --- rendering ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["debian-13", "debian-12"])
@pytest.mark.parametrize("target", ["1.6.6", "1.11.2"])
def test_render_per_suite(tmp_path: Path, provider: str, target: str) -> None:
    """Both suites render for both Packer targets; the provisioning environment carries the
    definition's flwr version and image tag (the container follows the suite, not the HCL)."""
    flwr = "1.42.0"
    image = load(tmp_path, provider, flwr, lock=LOCKS[provider])
    request = plan.Request(image, render.PackerTarget.parse(target), toolkit=None, firmware=None)
    run = plan.runs(request, ImageArtifacts(tmp_path / "out", image.name)).configure
    rendered = render.render(
        image, run, target=request.target, ssh_public_key="ssh-ed25519 AAAA test", firmware=None, instance_id="i-test"
    )
    with rendered.hcl.open() as handle:
        doc = hcl2.load(handle)
    assert doc["build"] and doc["source"]
    text = rendered.hcl.read_text()
    assert f"FLWR_VERSION={flwr}" in text and f"FLOWER_SUPERNODE_IMAGE=flwr-supernode:{flwr}" in text
