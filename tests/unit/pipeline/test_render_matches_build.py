"""`render` writes exactly what a build with the same options renders and then runs.

Both go through plan.check/runs/write; this test runs the real `render` command and the real
`build` command (its slow stages replaced by fakes, stopped right after rendering) with the same
key pair and cloud-init instance ids, and compares every rendered file byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance_build import build, cli, config
from appliance_build.cache import inputs_hash
from appliance_build.errors import BuildError
from appliance_build.stages import packer, render
from appliance_build.stages.base import BaseImage
from appliance_build.stages.container import ContainerImage
from appliance_build.vm.accel import Accelerator
from tests.fixtures import toolkit_debs

RENDERED = ("packer", "seed", "layer/packer", "layer/seed", "opennebula")


class StopAfterRender(BuildError):
    pass


def _rendered(root: Path) -> dict[str, str]:
    files = [p for area in RENDERED for p in sorted((root / area).rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def fixed_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The two per-build random values (the key pair, cloud-init instance ids), made equal."""

    @contextlib.contextmanager
    def keypair(label: str) -> Iterator[packer.KeyPair]:
        yield packer.KeyPair(Path("/nonexistent/id_ed25519"), "ssh-ed25519 AAAAfixed build")

    monkeypatch.setattr(packer, "build_keypair", keypair)
    yield


def _fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = itertools.count(1)
    monkeypatch.setattr(render, "new_instance_id", lambda: f"flower-build-test-{next(counter)}")


def _fake_slow_stages(monkeypatch: pytest.MonkeyPatch, name: str, *, offline: bool) -> None:
    image = config.offline(config.load(name)) if offline else config.load(name)
    base_key = build.base_stage.cache_entry(image.base)[0]
    container_key = inputs_hash(build.container_stage.inputs(image.flower, image.base))
    base = BaseImage(Path("/nonexistent/disk.qcow2"), base_key, True, {})
    container = ContainerImage(Path("/nonexistent/rootfs.tar.gz"), image.flower.image_tag, container_key, True, {})
    monkeypatch.setattr(build.base_stage, "ensure", lambda *a, **k: base)
    monkeypatch.setattr(build.accel_probe, "for_disk", lambda *a: Accelerator("kvm", "host", "test"))
    monkeypatch.setattr(build.container_stage, "ensure", lambda *a, **k: container)

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise StopAfterRender("stopped after render (test)")

    monkeypatch.setattr(build.layer_stage, "ensure", stop)


@pytest.mark.parametrize("name", ["supernode-cpu", "supernode-gpu", "supernode-cpu-debian12"])
def test_render_writes_what_the_build_renders(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_identity: None
) -> None:
    options = ["--packer-target", "1.6.6"]
    if config.load(name).gpu is not None:
        debs = tmp_path / "debs"
        debs.mkdir()
        toolkit_debs.build(debs)
        options += ["--offline", "--toolkit-source", f"local:{debs}"]  # no NVIDIA repository here
    root = Path(os.environ["FLOWER_BUILD_DIR"]) / name

    _fixed_ids(monkeypatch)
    assert cli.main(["render", name, *options]) == 0
    rendered = _rendered(root)
    assert {str(Path(p).parent) for p in rendered} == {*RENDERED}
    assert "FLOWER_TOOLKIT_SOURCE=local" in (root / "packer" / f"{name}.pkr.hcl").read_text() or "gpu" not in name

    for area in RENDERED:
        for path in (root / area).rglob("*"):
            if path.is_file():
                path.unlink()
    _fixed_ids(monkeypatch)
    _fake_slow_stages(monkeypatch, name, offline="--offline" in options)
    assert cli.main(["build", name, *options]) == 2  # StopAfterRender, right after plan.write()
    assert _rendered(root) == rendered


def test_the_comparison_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_identity: None) -> None:
    """Different options render different files: the equality above is not vacuous."""
    root = Path(os.environ["FLOWER_BUILD_DIR"]) / "supernode-cpu"
    _fixed_ids(monkeypatch)
    assert cli.main(["render", "supernode-cpu", "--packer-target", "1.6.6"]) == 0
    legacy = _rendered(root)
    _fixed_ids(monkeypatch)
    assert cli.main(["render", "supernode-cpu", "--packer-target", "1.11.2"]) == 0
    assert _rendered(root) != legacy
