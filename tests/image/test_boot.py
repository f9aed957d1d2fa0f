"""The built image boots under SeaBIOS and under OVMF to an SSH login as root,
with a key that exists only for this test and is handed in at boot through the
OpenNebula CONTEXT CD (cloud-init's OpenNebula datasource installs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance_build.artifacts import ImageArtifacts
from appliance_build.vm import appliance

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_to_ssh_with_key_from_context(
    firmware: str, image_file: Path, accel: Any, artifacts: ImageArtifacts,
    timings: dict[str, Any], tmp_path: Path,
) -> None:  # fmt: skip
    before = image_file.stat().st_mtime_ns
    with appliance.boot(image_file, tmp_path, {}, firmware=firmware, accel=accel) as booted:
        code, out, _ = booted.run(
            "test -d /sys/firmware/efi && echo EFI || echo BIOS; "
            "grep -c . /root/.ssh/authorized_keys; cat /etc/machine-id | wc -c"
        )
        booted.collect(artifacts.scenario_results(f"boot-{firmware}"))
    timings[f"boot-{firmware}"] = {"ssh_login_s": round(booted.ssh_seconds, 1)}
    lines = out.split()
    assert code == 0
    assert lines[0] == ("EFI" if firmware == "uefi" else "BIOS")
    assert lines[1] == "1", "exactly the key from the context, nothing left from the build"
    assert lines[2] == "33", "a machine-id generated on this first boot"
    assert image_file.stat().st_mtime_ns == before, "tests must never write the built image"
