"""The system layer's cache key and the per-provisioner times from Packer's timestamped log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance_build import config, paths, plan
from appliance_build.artifacts import ImageArtifacts
from appliance_build.stages import layer, packer, render

LEGACY = render.PackerTarget.parse("1.6.6")


def _layer_key(tmp_path: Path, name: str = "supernode-cpu") -> str:
    image = config.load(name)
    runs = plan.runs(plan.Request(image, LEGACY, toolkit=None, firmware=None), ImageArtifacts(tmp_path / name, name))
    assert runs.layer is not None and runs.layer_key is not None
    assert runs.configure.disk == layer.cache_entry(image, runs.layer, runs.base_key, runs.container_key)[1] / (
        "disk.qcow2"
    )
    return runs.layer_key


@pytest.fixture
def provision_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of provision/ the definitions read their steps from, to change scripts in."""
    copy = tmp_path / "provision"
    shutil.copytree(paths.PROVISION_DIR, copy)
    monkeypatch.setattr(config, "PROVISION_DIR", copy)
    monkeypatch.setattr(layer, "FINALIZE", copy / "finalize.sh")
    return copy


def test_a_later_step_leaves_the_layer_key(tmp_path: Path, provision_copy: Path) -> None:
    before = _layer_key(tmp_path)
    with (provision_copy / "50-appliance-runtime.sh").open("a") as f:
        f.write("# changed\n")
    with (provision_copy / "90-cleanup.sh").open("a") as f:
        f.write("# changed\n")
    assert _layer_key(tmp_path) == before


@pytest.mark.parametrize("script", ["10-docker-engine.sh", "30-supernode-container.sh", "finalize.sh"])
def test_a_layer_step_changes_the_layer_key(tmp_path: Path, provision_copy: Path, script: str) -> None:
    before = _layer_key(tmp_path)
    with (provision_copy / script).open("a") as f:
        f.write("# changed\n")
    assert _layer_key(tmp_path) != before


def test_layers_of_different_images_differ(tmp_path: Path) -> None:
    assert _layer_key(tmp_path, "supernode-cpu") != _layer_key(tmp_path, "supernode-cpu-debian12")
    assert _layer_key(tmp_path, "supernode-cpu") != _layer_key(tmp_path, "supernode-gpu")


LOG = """\
packer validate output has no timestamps
2026-12-01T23:18:10Z: qemu.supernode-cpu: output will be in this color.
2026-12-01T23:18:11Z: ==> qemu.supernode-cpu: Copying hard drive...
2026-12-01T23:18:19Z: ==> qemu.supernode-cpu: Waiting for SSH to become available...
2026-12-01T23:19:09Z: ==> qemu.supernode-cpu: Connected to SSH!
2026-12-01T23:19:10Z: ==> qemu.supernode-cpu: Uploading /b/flower-build => /var/tmp/
2026-12-01T23:19:14Z: ==> qemu.supernode-cpu: Provisioning with shell script: /r/provision/50-appliance-runtime.sh
2026-12-01T23:19:14Z:     qemu.supernode-cpu: appliance runtime installed
2026-12-01T23:19:31Z: ==> qemu.supernode-cpu: Provisioning with shell script: /r/provision/inventory.sh
2026-12-01T23:19:40Z: ==> qemu.supernode-cpu: Downloading /var/tmp/flower-inventory.json => /b/inventory.json
2026-12-01T23:19:41Z: ==> qemu.supernode-cpu: Provisioning with shell script: /r/provision/90-cleanup.sh
2026-12-01T23:20:01Z: ==> qemu.supernode-cpu: Gracefully halting virtual machine...
2026-12-01T23:20:13Z: Build 'qemu.supernode-cpu' finished after 2 minutes 3 seconds.
"""


def test_provisioner_seconds_from_a_timestamped_log() -> None:
    assert packer.provisioner_seconds(LOG) == {
        "start": 9.0,
        "boot to SSH": 50.0,
        "connected": 1.0,
        "upload": 4.0,
        "50-appliance-runtime.sh": 17.0,
        "inventory.sh": 9.0,
        "download": 1.0,
        "90-cleanup.sh": 20.0,
        "shutdown (finalize.sh)": 12.0,
    }


def test_provisioner_seconds_of_packer_1_6_names_and_fractions() -> None:
    log = (
        "2026-12-01T23:18:10.250+00:00: ==> supernode-cpu: Waiting for SSH to become available...\n"
        "2026-12-01T23:18:40.750+00:00: ==> supernode-cpu: Provisioning with shell script: /x/30-a.sh\n"
        "2026-12-01T23:18:50.750+00:00: ==> supernode-cpu: Provisioning with shell script: /x/30-a.sh\n"
        "2026-12-01T23:18:52.750+00:00: Build 'supernode-cpu' finished.\n"
    )
    assert packer.provisioner_seconds(log) == {"start": 0.0, "boot to SSH": 30.5, "30-a.sh": 12.0}
