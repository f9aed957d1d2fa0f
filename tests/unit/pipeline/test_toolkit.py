"""NVIDIA Container Toolkit source: resolved on the host, fail fast with instructions."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from appliance_build import build, config
from appliance_build.artifacts import ImageArtifacts
from appliance_build.config import GpuConfig
from appliance_build.errors import BuildError, ConfigError
from appliance_build.stages import toolkit
from tests.fixtures import apt_mirror, toolkit_debs

UNREACHABLE = "http://127.0.0.1:9/libnvidia-container/stable/deb/amd64"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> apt_mirror.ThrowawayKey:
    return apt_mirror.ThrowawayKey.create(tmp_path_factory.mktemp("gnupg"))


@pytest.fixture
def repo(tmp_path: Path, key: apt_mirror.ThrowawayKey) -> Iterator[str]:
    root = tmp_path / "www"
    (root / "deb").mkdir(parents=True)
    (root / "gpgkey").write_bytes(key.public)
    (root / "deb" / "Packages").write_text("Package: nvidia-container-toolkit\n")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def unreachable() -> GpuConfig:
    return GpuConfig(toolkit_repo=UNREACHABLE, toolkit_key_url="http://127.0.0.1:9/gpgkey")


def test_no_source_stops_with_instructions() -> None:
    with pytest.raises(BuildError) as err:
        toolkit.resolve(unreachable(), timeout=2)
    text = str(err.value)
    assert "not reachable" in text
    assert "--toolkit-source local:/path/to/debs" in text and "--toolkit-source mirror:" in text
    assert "--allow-missing-toolkit" in text


@pytest.mark.parametrize("how", ["flag", "definition"])
def test_explicit_permission_gives_absent(how: str) -> None:
    gpu = unreachable() if how == "flag" else replace(unreachable(), allow_missing_toolkit=True)
    plan = toolkit.resolve(gpu, allow_missing=how == "flag", timeout=2)
    assert plan.source == "absent" and "not reachable" in plan.reason
    assert plan.env()["FLOWER_TOOLKIT_SOURCE"] == "absent"


def test_reachable_repo_fetches_key(repo: str, tmp_path: Path, key: apt_mirror.ThrowawayKey) -> None:
    gpu = GpuConfig(
        toolkit_repo=f"{repo}/deb", toolkit_key_url=f"{repo}/gpgkey", toolkit_key_fingerprint=key.fingerprint
    )
    plan = toolkit.resolve(gpu, timeout=5)
    assert plan.env()["FLOWER_TOOLKIT_KEY_FINGERPRINT"] == key.fingerprint
    assert plan.source == "nvidia-repo" and plan.version == gpu.toolkit_version and plan.repo == f"{repo}/deb"
    plan.stage_into(tmp_path / "upload")
    assert (
        b"BEGIN PGP PUBLIC KEY BLOCK" in (tmp_path / "upload" / "toolkit" / "nvidia-container-toolkit.asc").read_bytes()
    )


def test_mirror_route(repo: str, key: apt_mirror.ThrowawayKey) -> None:
    pinned = GpuConfig(toolkit_key_url=f"{repo}/gpgkey", toolkit_key_fingerprint=key.fingerprint)
    gpu = toolkit.parse_override(f"mirror:{repo}/deb", pinned)
    plan = toolkit.resolve(gpu, timeout=5)
    assert plan.source == "mirror" and plan.repo == f"{repo}/deb"


def test_a_key_with_another_fingerprint_is_refused(repo: str) -> None:
    gpu = toolkit.parse_override(f"mirror:{repo}/deb", GpuConfig(toolkit_key_url=f"{repo}/gpgkey"))
    with pytest.raises(BuildError, match=r"fingerprint mismatch: expected C95B321B61E88C1809C4F759DDCAE044F796ECB0"):
        toolkit.resolve(gpu, timeout=5)


def test_local_directory_of_fixture_packages(tmp_path: Path) -> None:
    debs = toolkit_debs.build(tmp_path / "debs")
    gpu = toolkit.parse_override(f"local:{tmp_path / 'debs'}", GpuConfig())
    plan = toolkit.resolve(gpu)
    assert plan.source == "local" and plan.version == toolkit_debs.FIXTURE_VERSION
    assert set(plan.packages) == set(toolkit.REQUIRED)
    plan.stage_into(tmp_path / "upload")
    assert sorted(p.name for p in (tmp_path / "upload" / "toolkit").iterdir()) == sorted(d.name for d in debs)


def test_local_directory_missing_a_package(tmp_path: Path) -> None:
    toolkit_debs.build(tmp_path / "debs", omit=("libnvidia-container1",))
    gpu = toolkit.parse_override(f"local:{tmp_path / 'debs'}", GpuConfig())
    with pytest.raises(BuildError, match="lacks libnvidia-container1"):
        toolkit.resolve(gpu)


def test_local_directory_empty(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"no \.deb files"):
        toolkit.resolve(GpuConfig(toolkit_source="local", toolkit_path=str(tmp_path)))


@pytest.mark.parametrize("text", ["docker-hub", "mirror:ftp://x", "local:", "nvidia-repo:extra"])
def test_bad_override(text: str) -> None:
    with pytest.raises(ConfigError, match="--toolkit-source"):
        toolkit.parse_override(text, GpuConfig())


def test_gpu_build_without_source_stops_before_anything_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(build.base_stage, "ensure", lambda *a, **k: calls.append("base"))
    real = config.load

    def load(name: str) -> config.ImageConfig:
        image = real(name)
        assert image.gpu is not None
        image = config.offline(image)  # the driver from Debian: the toolkit is what is missing
        assert image.gpu is not None
        return replace(image, gpu=replace(image.gpu, toolkit_repo=UNREACHABLE, toolkit_key_url=UNREACHABLE))

    monkeypatch.setattr(build.plan.config, "load", load)
    with pytest.raises(BuildError, match="--allow-missing-toolkit"):
        build.build_image("supernode-gpu", packer_target="1.6.6")
    assert calls == []
    out = ImageArtifacts.for_image("supernode-gpu")
    assert not out.qcow2.exists() and not out.manifest.exists()


def test_toolkit_flags_rejected_for_the_cpu_image() -> None:
    with pytest.raises(ConfigError, match="not a GPU image"):
        build.build_image("supernode-cpu", allow_missing_toolkit=True)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("mirror:http://x y", "toolkit_mirror"),
        ("mirror:ftp://mirror.example", "toolkit_mirror"),
        ("mirror:https://m.example/?q=1", "toolkit_mirror"),
        ("nvidia-repo:x", "expected nvidia-repo"),
    ],
)
def test_toolkit_source_override_is_checked_like_the_definition(text: str, named: str) -> None:
    gpu = config.load("supernode-gpu").gpu
    assert gpu is not None
    with pytest.raises(ConfigError, match=named):
        toolkit.parse_override(text, gpu)


def test_provisioning_configures_docker_for_cdi_and_keeps_daemon_json() -> None:
    """65 runs `nvidia-ctk runtime configure --runtime=docker --cdi.enabled` (Docker >= 25) and
    checks that no daemon.json key written before (10-docker-engine's features.cdi) was lost."""
    script = (Path(__file__).resolve().parents[3] / "provision" / "65-nvidia-container-toolkit.sh").read_text()
    assert "configure=(nvidia-ctk runtime configure --runtime=docker)" in script
    assert "configure+=(--cdi.enabled)" in script
    assert "lost = sorted(set(before) - set(after))" in script
    assert 'after.get("features", {}).get("cdi") is True' in script
