"""Image definitions: merged, typed, and every bad key or value named with its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance_build import config
from appliance_build.errors import ConfigError
from tests.fixtures.definitions import VALID


def write(dir_: Path, name: str, text: str) -> None:
    (dir_ / f"{name}.toml").write_text(text)


def test_shipped_definitions_load() -> None:
    cpu = config.load("supernode-cpu")
    gpu = config.load("supernode-gpu")
    assert cpu.variant == "cpu" and gpu.variant == "gpu"
    assert gpu.disk.firmware == "uefi" and gpu.disk.machine == "q35"
    assert cpu.disk.firmware == "bios"
    # the child inherits what it does not override
    assert gpu.flower == cpu.flower
    assert gpu.base.provider == cpu.base.provider and gpu.base.kernel == cpu.base.kernel
    assert gpu.base.mirror == cpu.base.mirror
    assert set(cpu.provision) <= set(gpu.provision)
    assert list(gpu.provision) == sorted(gpu.provision)


def test_config_is_frozen() -> None:
    cpu = config.load("supernode-cpu")
    with pytest.raises(AttributeError):
        cpu.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("colour = 'red'\n" + VALID, "colour", "unknown key"),
        (VALID.replace('variant = "cpu"', 'variant = "tpu"'), "variant", "'cpu' or 'gpu'"),
        (VALID + "[disk]\nsize = 'big'\n", "disk.size", "8G"),
        (VALID + "[disk]\nfirmware = 'coreboot'\n", "disk.firmware", "'bios' or 'uefi'"),
        (VALID + "[disk]\nsize = '1G'\n", "disk.size", "too small"),
        (VALID + "[vm]\ncpus = 'two'\n", "vm.cpus", "integer"),
        (VALID + "[vm]\nmemory = 64\n", "vm.memory", "512"),
        (VALID + "[vm]\nnics = 2\n", "vm.nics", "unknown key"),
        (VALID.replace('"1.42.0"', '"latest"'), "flower.version", "X.Y.Z"),
        (VALID.replace("locks/flwr-1.42.0-py311.txt", "locks/nope.txt"), "flower.lock", "no lock file"),
        (VALID.replace('"debian-12"', '"arch"'), "base.provider", "debian-12"),
        (VALID.replace('"90-cleanup.sh"', '"cleanup.sh"'), "provision[1]", "10-docker-engine.sh"),
        (VALID.replace('"90-cleanup.sh"', '"91-missing.sh"'), "provision[1]", "no script"),
        ("packages = ['ok', 'rm -rf /']\n" + VALID, "packages[1]", "not a package name"),
        (VALID.replace('provider = "debian-12"', 'provider = "ubuntu-24.04"'), "base.url", "URL"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    write(tmp_path, "img", text)
    with pytest.raises(ConfigError) as err:
        config.load("img", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "img.toml") in message
    assert f"key '{key}'" in message
    assert words in message


def test_missing_required_key(tmp_path: Path) -> None:
    write(tmp_path, "img", VALID.replace('description = "test image"\n', ""))
    with pytest.raises(ConfigError, match=r"key 'description': is required"):
        config.load("img", tmp_path)


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    write(tmp_path, "img", "description = \n")
    with pytest.raises(ConfigError, match=r"img\.toml: not valid TOML"):
        config.load("img", tmp_path)


def test_unknown_image_lists_known(tmp_path: Path) -> None:
    write(tmp_path, "one", VALID)
    with pytest.raises(ConfigError, match="known images: one"):
        config.load("two", tmp_path)


def test_extends_merges_and_appends(tmp_path: Path) -> None:
    write(tmp_path, "parent", "packages = ['jq']\n" + VALID)
    write(
        tmp_path,
        "child",
        'extends = "parent"\nvariant = "gpu"\n[disk]\nfirmware = "uefi"\n[gpu]\ndriver_branch = "550"\n'
        'kernel_modules = "proprietary"\n'  # the parent is debian-12, whose open modules cannot be installed
        "[extend]\npackages = ['pciutils']\nprovision = ['30-supernode-container.sh']\n",
    )
    child = config.load("child", tmp_path)
    assert child.variant == "gpu" and child.disk.firmware == "uefi"
    assert child.gpu is not None and child.gpu.driver_branch == "550"
    assert child.description == "test image"
    assert child.packages == ("jq", "pciutils")
    assert child.provision == ("10-docker-engine.sh", "30-supernode-container.sh", "90-cleanup.sh")
    assert child.source_files == (tmp_path / "parent.toml", tmp_path / "child.toml")


def test_extends_loop_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a", 'extends = "b"\n')
    write(tmp_path, "b", 'extends = "a"\n')
    with pytest.raises(ConfigError, match=r"loops: a -> b -> a"):
        config.load("a", tmp_path)


def test_extend_without_extends(tmp_path: Path) -> None:
    write(tmp_path, "img", VALID + "[extend]\npackages = ['x']\n")
    with pytest.raises(ConfigError, match="'extend' needs 'extends"):
        config.load("img", tmp_path)


def test_unknown_extend_key(tmp_path: Path) -> None:
    write(tmp_path, "parent", VALID)
    write(tmp_path, "child", 'extends = "parent"\n[extend]\nkernel = ["x"]\n')
    with pytest.raises(ConfigError, match=r"extend\.kernel"):
        config.load("child", tmp_path)


@pytest.mark.parametrize(
    ("gpu_table", "key", "words"),
    [
        ('driver_branch = "latest"', "gpu.driver_branch", "535, 550 or 580"),
        ('driver_source = "cuda"', "gpu.driver_source", "'nvidia-repo' or 'debian'"),
        ('driver_key_fingerprint = "eb69 3b30"', "gpu.driver_key_fingerprint", "40 upper-case hex digits"),
        ('driver_install = "initrd"', "gpu.driver_install", "'bootstrap' or 'guest'"),
        ('toolkit_source = "docker-hub"', "gpu.toolkit_source", "'nvidia-repo', 'local' or 'mirror'"),
        ('toolkit_source = "local"', "gpu.toolkit_path", "is required"),
        ('toolkit_source = "mirror"\ntoolkit_mirror = "ftp://x"', "gpu.toolkit_mirror", "http(s) URL"),
        ("allow_missing_toolkit = 1", "gpu.allow_missing_toolkit", "true or false"),
    ],
)
def test_bad_gpu_values(tmp_path: Path, gpu_table: str, key: str, words: str) -> None:
    write(tmp_path, "img", VALID.replace('variant = "cpu"', 'variant = "gpu"') + "[gpu]\n" + gpu_table + "\n")
    with pytest.raises(ConfigError) as err:
        config.load("img", tmp_path)
    assert f"key '{key}'" in str(err.value) and words in str(err.value)


def test_gpu_variant_needs_gpu_table(tmp_path: Path) -> None:
    write(tmp_path, "img", VALID.replace('variant = "cpu"', 'variant = "gpu"'))
    with pytest.raises(ConfigError, match=r"key 'gpu': variant 'gpu' needs a \[gpu\] table"):
        config.load("img", tmp_path)


def test_shipped_gpu_definition() -> None:
    gpu = config.load("supernode-gpu")
    assert gpu.gpu is not None and gpu.gpu.driver_branch == "580"  # NVIDIA's R580 LTSB
    assert "non-free" in gpu.base.components and "contrib" in gpu.base.components
    # NVIDIA's repository, open modules; offline: Debian's 550 with proprietary modules (its open
    # 550 package does not build against the current kernel)
    assert gpu.gpu.driver_source == "nvidia-repo" and gpu.gpu.kernel_modules == "open"
    assert gpu.base.nvidia_driver is not None and gpu.base.nvidia_driver.packages == (
        "nvidia-driver-cuda",
        "nvidia-kernel-open-dkms",
    )
    assert not any("nvidia" in p for p in gpu.base.extra_packages)  # no Debian driver package beside NVIDIA's
    offline = config.offline(gpu)
    assert offline.gpu is not None and offline.gpu.kernel_modules == "proprietary"
    assert offline.base.extra_packages.count("nvidia-kernel-dkms") == 1 and offline.base.nvidia_driver is None
    assert "nvidia-open-kernel-dkms" not in offline.base.extra_packages
    assert config.load("supernode-cpu").gpu is None
