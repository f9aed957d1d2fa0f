"""A build replaces build/<image>/ only with a complete new image: a bad flag, a failing stage and
SIGINT each leave the previous qcow2, .sha256, manifest.json and test-results/ as they were."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from appliance_build import build, cli, config
from appliance_build.artifacts import BuildTree, ImageArtifacts, Manifest
from appliance_build.cache import inputs_hash
from appliance_build.errors import BuildError
from appliance_build.stages import finalize

REPO = Path(__file__).resolve().parents[3]


def _previous(out: ImageArtifacts) -> tuple[Path, ...]:
    """What an earlier build and test run left: image, checksum, manifest, JUnit XML, tested record."""
    return (*out.results, out.junit, out.tested_record)


def _previous_image(build_dir: BuildTree, name: str = "supernode-cpu") -> dict[str, str]:
    out = build_dir.image(name)
    out.test_results.mkdir(parents=True)
    for path in _previous(out):
        path.write_text(f"previous {path.name}\n")
    return _snapshot(out.root)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "logs" not in p.relative_to(root).parts[0]
    }


@pytest.fixture
def build_dir() -> BuildTree:
    return BuildTree.default()  # per-test (tests/conftest.py)


@pytest.mark.parametrize(
    ("argv", "image"),
    [
        (["build", "supernode-cpu", "--packer-target", "latest"], "supernode-cpu"),
        (["build", "supernode-gpu", "--toolkit-source", "local:/nonexistent"], "supernode-gpu"),
        (["build", "supernode-cpu", "--allow-missing-toolkit"], "supernode-cpu"),
    ],
)
def test_a_bad_flag_touches_nothing(
    argv: list[str], image: str, build_dir: BuildTree, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _previous_image(build_dir, image)
    assert cli.main(argv) == 2
    assert "error:" in capsys.readouterr().err
    assert _snapshot(build_dir.image(image).root) == before
    assert not build_dir.image(image).logs.exists()  # not even the logs were rotated


class FakeStages:
    """The build's stages, replaced by fast fakes; `fail_at` names the one that raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: str | None = None) -> None:
        self.fail_at = fail_at
        self.calls: list[str] = []
        fake: Any = self
        monkeypatch.setattr(build.base_stage, "ensure", lambda *a, **k: fake.step("base", fake.base()))
        monkeypatch.setattr(build.accel_probe, "for_disk", lambda *a: fake.step("accel", fake.accel()))
        monkeypatch.setattr(build.container_stage, "ensure", lambda *a, **k: fake.step("container", fake.container()))
        monkeypatch.setattr(build, "prepare_upload", lambda *a, **k: fake.step("upload", None))
        monkeypatch.setattr(build.plan, "write", lambda *a, **k: fake.step("render", []))
        monkeypatch.setattr(build.layer_stage, "ensure", lambda *a, **k: fake.step("layer", fake.layer()))
        monkeypatch.setattr(build.packer, "validate", lambda *a, **k: fake.step("validate", None))
        # the fake Packer run writes what the real one downloads: the guest's inventory
        monkeypatch.setattr(
            build.packer, "build", lambda *a, **k: fake.step("packer", fake.inventory() or {"50-x.sh": 1.0})
        )
        monkeypatch.setattr(build.finalize, "compress", fake.compress)

    def step(self, name: str, value: Any) -> Any:
        self.calls.append(name)
        if name == self.fail_at:
            raise BuildError(f"{name} failed (fake)")
        return value

    def base(self) -> Any:
        from appliance_build.stages.base import BaseImage

        facts = {
            "distribution": "Debian GNU/Linux 13 (trixie)",
            "kernel": "6.12.38+deb13-amd64",
            "packages": {"systemd": "257.7-1"},
            "timings_s": {"mmdebstrap": 60.0},
            "build_seconds": 97.0,
        }
        key = build.base_stage.cache_entry(config.load("supernode-cpu").base)[0]  # what plan.runs() derives
        return BaseImage(Path("/nonexistent/disk.qcow2"), key, True, facts)

    def layer(self) -> Any:
        from appliance_build.stages.layer import SystemLayer

        return SystemLayer(Path("/nonexistent/layer.qcow2"), "l" * 64, True, {"steps": ["30-x.sh"]})

    def accel(self) -> Any:
        from appliance_build.vm.accel import Accelerator

        return Accelerator("tcg", "max", "test")

    def container(self) -> Any:
        from appliance_build.stages.container import ContainerImage

        facts = {
            "tag": "flwr-supernode:x",
            "flwr": "1.41.0",
            "python_packages": {"flwr": "1.41.0"},
            "base": "debian trixie (mmdebstrap minbase)",
            "python": "3.13",
            "rootfs_bytes": 10,
        }
        image = config.load("supernode-cpu")
        key = inputs_hash(build.container_stage.inputs(image.flower, image.base))
        return ContainerImage(Path("/nonexistent/rootfs.tar.gz"), "flwr-supernode:x", key, True, facts)

    def inventory(self) -> None:
        """What Packer downloads from the guest (provision/inventory.sh) at the end of its build."""
        inventory = {
            "distribution": "Debian GNU/Linux 13 (trixie)",
            "kernel": "6.12.38+deb13-amd64",
            "kernels_installed": ["6.12.38+deb13-amd64"],
            "docker": "26.1.5",
            "docker_images": [],
            "flwr": "1.41.0",
            "held_packages": [],
            "packages": {"systemd": "257.7-1"},
        }
        ImageArtifacts.for_image("supernode-cpu").inventory.write_text(json.dumps(inventory))

    def compress(self, overlay: Path, final: Path, log: Path, compression: str) -> dict[str, Any]:
        finalize.staged(final).write_text("new image\n")
        finalize.staged(final.with_name(final.name + ".sha256")).write_text(f"abc  {final.name}\n")
        self.step("compress", None)
        return {
            "file": final.name,
            "sha256": "abc",
            "file_bytes": 10,
            "virtual_bytes": 2**30,
            "format": "qcow2 (zlib-compressed)",
        }


@pytest.mark.parametrize("stage", ["base", "container", "layer", "packer", "compress"])
def test_a_failing_stage_keeps_the_previous_image(
    stage: str, monkeypatch: pytest.MonkeyPatch, build_dir: BuildTree, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _previous_image(build_dir)
    fakes = FakeStages(monkeypatch, fail_at=stage)
    assert cli.main(["build", "supernode-cpu", "--packer-target", "1.6.6"]) == 2
    assert fakes.calls[-1] == stage
    assert _snapshot(build_dir.image("supernode-cpu").root) == before  # no .new file left either
    assert "the previous image is unchanged" in capsys.readouterr().out


def test_a_complete_build_swaps_in_and_moves_the_old_test_results_aside(
    monkeypatch: pytest.MonkeyPatch, build_dir: BuildTree
) -> None:
    _previous_image(build_dir)
    FakeStages(monkeypatch)
    assert cli.main(["build", "supernode-cpu", "--packer-target", "1.6.6"]) == 0
    out = build_dir.image("supernode-cpu")
    root = out.root
    assert out.qcow2.read_text() == "new image\n"
    assert out.sha256.read_text() == "abc  supernode-cpu.qcow2\n"
    manifest = Manifest.load(out.manifest)
    assert manifest.artifact.sha256 == "abc" and manifest.contents.flwr == "1.41.0"
    assert manifest.base.facts == {} and "packages" not in manifest.base.facts  # the list is in contents
    assert not out.test_results.exists()  # they described the old file
    assert (out.test_results_previous / out.tested_record.name).is_file()
    assert not list(root.glob("*.new"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_real_build_keeps_the_previous_image(
    tmp_path: Path, build_dir: BuildTree, signum: signal.Signals
) -> None:
    """A real `python -m appliance_build build` whose mmdebstrap (a fake that sleeps) gets Ctrl-C or SIGTERM."""
    before = _previous_image(build_dir)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    started = tmp_path / "mmdebstrap-started"
    (fake_bin / "mmdebstrap").write_text(f"#!/bin/sh\necho $$ > {started}\nexec sleep 300\n")
    (fake_bin / "mmdebstrap").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance_build", "build", "supernode-cpu", "--packer-target", "1.6.6"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), proc.communicate(timeout=30)[0]
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "the previous image is unchanged" in output
    assert _snapshot(build_dir.image("supernode-cpu").root) == before
    mmdebstrap_pid = int(started.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(mmdebstrap_pid, 0)  # its process group was stopped too
