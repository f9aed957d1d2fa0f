"""The NVIDIA driver's source as a definition setting, the --offline switch, the preflight's
early stop and the support table (the route itself runs in tests/integration/test_nvidia_driver_route.py)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest

from appliance_build import build, config, nvidia_driver, nvidia_support
from appliance_build.artifacts import ImageArtifacts
from appliance_build.errors import BuildError, ConfigError
from appliance_build.paths import REPO
from tests.fixtures import apt_mirror, toolkit_debs
from tests.fixtures.manifests import sample_manifest

GPU = """
description = "test image"
variant = "gpu"
provision = ["10-docker-engine.sh", "60-nvidia-driver.sh", "90-cleanup.sh"]
[base]
provider = "{provider}"
extra_packages = ["linux-headers-amd64"]
[flower]
version = "1.42.0"
lock = "{lock}"
[gpu]
{gpu}
"""
REPO_580 = 'driver_source = "nvidia-repo"\ndriver_branch = "580"\ndriver_version = "580.126.20-1"\n'


def load(tmp_path: Path, gpu: str, provider: str = "debian-13") -> config.ImageConfig:
    lock = "locks/flwr-1.42.0.txt" if provider == "debian-13" else "locks/flwr-1.42.0-py311.txt"
    (tmp_path / "img.toml").write_text(GPU.format(provider=provider, lock=lock, gpu=gpu))
    return config.load("img", tmp_path)


# --- the support table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("branch", "today", "status", "ends"),
    [
        ("580", dt.date(2026, 12, 1), "supported", "2028-06"),
        ("580", dt.date(2028, 6, 30), "supported", "2028-06"),  # through the month's last day
        ("580", dt.date(2028, 7, 1), "past-support", "2028-06"),
        ("595", dt.date(2026, 12, 1), "supported", "2027-03"),
        ("620", dt.date(2026, 12, 1), "supported", "2029-09"),
        ("535", dt.date(2026, 5, 31), "supported", "2026-06"),
        ("535", dt.date(2026, 7, 1), "past-support", "2026-06"),
        ("550", dt.date(2026, 12, 1), "past-support", ""),  # no longer listed
        ("570", dt.date(2026, 12, 1), "past-support", ""),
        ("999", dt.date(2026, 12, 1), "unknown", ""),
    ],
)
def test_support_status_from_the_table(branch: str, today: dt.date, status: str, ends: str) -> None:
    record = nvidia_support.driver_record("nvidia-repo", branch, "open", f"{branch}.1.2", today=today)
    assert (record.support_status, record.support_ends) == (status, ends)


def test_record_has_the_manifest_field_names() -> None:
    names = [f.name for f in fields(nvidia_support.DriverRecord)]
    assert names == [
        "driver_source",
        "driver_branch",
        "driver_version",
        "kernel_modules",
        "support_ends",
        "support_status",
    ]


def test_table_cites_nvidias_lifecycle_page_and_knows_each_repository() -> None:
    text = nvidia_support.TABLE.read_text()
    assert nvidia_support.LIFECYCLE_URL in text
    repos = nvidia_support.repositories()
    assert set(repos) == {"debian-12", "debian-13"}
    assert repos["debian-13"].url == "https://developer.download.nvidia.com/compute/cuda/repos/debian13/x86_64/"
    assert all(nvidia_support.FINGERPRINT_RE.match(r.fingerprint) for r in repos.values())


def test_support_is_computed_for_today_from_the_records_branch() -> None:
    """A manifest written while the branch was supported says so; publishing asks the table again."""
    gpu = sample_manifest("supernode-gpu", "gpu").gpu
    assert gpu is not None
    built = replace(gpu, driver_branch="535", support_ends="2026-06", support_status="supported")
    record = nvidia_support.from_manifest(built, today=dt.date(2026, 12, 1))
    assert record["support_status"] == "past-support" and record["support_ends"] == "2026-06"
    assert "no longer supports driver branch R535 (support ended 2026-06)" in nvidia_support.describe(record)


# --- the definition ------------------------------------------------------------------------


def test_nvidia_repo_route_from_the_definition_and_the_table(tmp_path: Path) -> None:
    image = load(tmp_path, REPO_580)
    route = image.base.nvidia_driver
    assert route == nvidia_driver.DriverRoute(
        url="https://developer.download.nvidia.com/compute/cuda/repos/debian13/x86_64/",
        key_url="https://developer.download.nvidia.com/compute/cuda/repos/debian13/x86_64/8793F200.pub",
        fingerprint="02182E60104FCDC26EAE1B8597A5D4CB8793F200",
        branch="580",
        version="580.126.20-1",
        kernel_modules="open",
    )
    assert route.packages == ("nvidia-driver-cuda", "nvidia-kernel-open-dkms")
    assert route.upstream_version == "580.126.20"
    # the suite's engine and headers, nothing of Debian's driver
    assert image.base.extra_packages == ("docker.io", "apparmor", "docker-cli", "linux-headers-amd64")
    assert image.gpu is not None and image.gpu.kernel_module_package == "nvidia-kernel-open-dkms"


def test_a_mirror_of_nvidias_repository(tmp_path: Path) -> None:
    mirror = 'driver_repo = "http://mirror.example/cuda/debian13/x86_64"\n'
    with pytest.raises(ConfigError, match=r"key 'gpu.driver_key_url': is required when driver_repo names a mirror"):
        load(tmp_path, REPO_580 + mirror)
    image = load(tmp_path, REPO_580 + mirror + 'driver_key_url = "http://mirror.example/key.asc"\n')
    assert image.base.nvidia_driver is not None
    assert image.base.nvidia_driver.url == "http://mirror.example/cuda/debian13/x86_64"
    assert image.base.nvidia_driver.fingerprint == nvidia_support.repositories()["debian-13"].fingerprint


@pytest.mark.parametrize(
    ("gpu", "key", "words"),
    [
        ('driver_source = "nvidia-repo"\ndriver_branch = "580"\n', "gpu.driver_version", "is required"),
        (
            'driver_source = "nvidia-repo"\ndriver_branch = "580"\ndriver_version = "595.45.04-1"\n',
            "gpu.driver_version",
            "not a version of driver_branch 580",
        ),
        (
            'driver_source = "nvidia-repo"\ndriver_branch = "580"\ndriver_version = "580.126.20"\n',
            "gpu.driver_version",
            "needs its Debian revision",
        ),
        (REPO_580 + 'driver_install = "guest"\n', "gpu.driver_source", "bootstrap chroot"),
        (
            REPO_580 + 'driver_key_fingerprint = "02182e60104fcdc26eae1b8597a5d4cb8793f200"\n',
            "gpu.driver_key_fingerprint",
            "40 upper-case hex digits",
        ),
        (REPO_580 + 'driver_repo = "http://mirror/x y"\n', "gpu.driver_repo", "http(s) URL"),
        (REPO_580 + 'debian_kernel_modules = "closed"\n', "gpu.debian_kernel_modules", "'open' or 'proprietary'"),
    ],
)
def test_bad_driver_settings(tmp_path: Path, gpu: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, gpu)
    assert f"key '{key}'" in str(err.value) and words in str(err.value), str(err.value)


def test_the_route_is_not_a_definition_key(tmp_path: Path) -> None:
    (tmp_path / "img.toml").write_text(
        GPU.format(provider="debian-13", lock="locks/flwr-1.42.0.txt", gpu=REPO_580).replace(
            'extra_packages = ["linux-headers-amd64"]', 'nvidia_driver = "http://evil.example"'
        )
    )
    with pytest.raises(ConfigError, match=r"key 'base.nvidia_driver': is not a definition key"):
        config.load("img", tmp_path)


def test_offline_takes_debians_driver(tmp_path: Path) -> None:
    image = config.offline(load(tmp_path, REPO_580 + 'debian_kernel_modules = "proprietary"\n'))
    assert image.gpu is not None and image.base.nvidia_driver is None
    assert (image.gpu.driver_source, image.gpu.driver_branch, image.gpu.kernel_modules) == (
        "debian",
        "550",
        "proprietary",
    )
    assert image.base.extra_packages == (
        "docker.io",
        "apparmor",
        "docker-cli",
        "linux-headers-amd64",
        *config.DEBIAN_DRIVER_PACKAGES,
        "nvidia-kernel-dkms",
    )
    assert image.gpu.driver_record().support_status == "past-support"


def test_offline_on_debian_12_needs_proprietary_modules(tmp_path: Path) -> None:
    image = load(tmp_path, REPO_580, provider="debian-12")
    with pytest.raises(ConfigError, match=r"--offline: Debian 12's open modules.*debian_kernel_modules"):
        config.offline(image)
    assert (
        config.offline(
            load(tmp_path, REPO_580 + 'debian_kernel_modules = "proprietary"\n', provider="debian-12")
        ).gpu.driver_branch
        == "535"
    )  # type: ignore[union-attr]


def test_shipped_gpu_image_uses_a_supported_branch_from_nvidias_repository() -> None:
    image = config.load("supernode-gpu")
    assert image.gpu is not None and image.gpu.driver_source == "nvidia-repo"
    assert nvidia_support.support(image.gpu.driver_branch, dt.date(2026, 12, 1)) == ("2028-06", "supported")
    assert image.gpu.driver_branch == "580" and image.gpu.kernel_modules == "open"


# --- the route's files are data ------------------------------------------------------------


def test_apt_files_hold_the_values_as_data() -> None:
    route = nvidia_driver.DriverRoute(
        "http://127.0.0.1:8080/repo/", "http://127.0.0.1:8080/repo/k.asc", "A" * 40, "580", "580.1.2-1", "proprietary"
    )
    files = nvidia_driver.apt_files(route, b"KEY")
    assert files[nvidia_driver.KEYRING] == b"KEY"
    assert files[nvidia_driver.SOURCE_LIST] == (
        b"deb [signed-by=/etc/apt/keyrings/flower-nvidia-driver.asc] http://127.0.0.1:8080/repo/ /\n"
    )
    prefs = files[nvidia_driver.PREFERENCES].decode()
    assert "Pin: version 580.1.2-1\nPin-Priority: 1001" in prefs and "Pin: origin 127.0.0.1\nPin-Priority: 100" in prefs
    assert route.packages == ("nvidia-driver-cuda", "nvidia-kernel-dkms")


def test_hook_passes_the_spec_file_not_the_values(tmp_path: Path) -> None:
    spec = tmp_path / "spec with space.json"
    text = nvidia_driver.hook(spec)
    assert text.endswith(f"install \"$1\" '{spec}'") and "580" not in text


# --- the build: stops early, or goes offline --------------------------------------------------


def _pointing_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = config.load

    def load(name: str) -> config.ImageConfig:
        image = real(name)
        assert image.base.nvidia_driver is not None
        route = replace(image.base.nvidia_driver, url=url, key_url=url + "key.asc")
        return replace(image, base=replace(image.base, nvidia_driver=route))

    monkeypatch.setattr(build.plan.config, "load", load)


def test_unreachable_repository_stops_the_build_within_seconds_naming_the_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(build.base_stage, "ensure", lambda *a, **k: calls.append("base"))
    monkeypatch.setattr(nvidia_driver, "PREFLIGHT_SECONDS", 3.0)
    with apt_mirror.silent_server() as url:
        _pointing_at(url, monkeypatch)
        started = time.monotonic()
        refusal = r"(?s)NVIDIA driver repository not reachable.*nox -s build_gpu -- --offline"
        with pytest.raises(BuildError, match=refusal):
            build.build_image("supernode-gpu", packer_target="1.6.6")
        assert time.monotonic() - started < 10
    assert calls == [] and not ImageArtifacts.for_image("supernode-gpu").root.exists()


def test_offline_builds_with_debians_driver_and_records_the_toolkit_absent() -> None:
    request = build.plan.check("supernode-gpu", packer_target="1.6.6", offline=True)
    image, toolkit = request.image, request.toolkit
    assert image.gpu is not None and image.gpu.driver_source == "debian" and image.base.nvidia_driver is None
    assert toolkit is not None and toolkit.source == "absent" and "--offline" in toolkit.reason


def test_offline_with_a_local_toolkit(tmp_path: Path) -> None:
    toolkit_debs.build(tmp_path)
    request = build.plan.check("supernode-gpu", packer_target="1.6.6", toolkit_source=f"local:{tmp_path}", offline=True)
    image, toolkit = request.image, request.toolkit
    assert toolkit is not None and toolkit.source == "local" and toolkit.version == toolkit_debs.FIXTURE_VERSION
    assert image.gpu is not None and image.gpu.driver_source == "debian"


def test_offline_is_refused_for_the_cpu_image() -> None:
    with pytest.raises(ConfigError, match=r"not a GPU image.*--offline"):
        build.build_image("supernode-cpu", offline=True)


def test_readme_gpu_command_is_offline() -> None:
    assert "nox -s build_gpu -- --offline" in (REPO / "README.md").read_text()
