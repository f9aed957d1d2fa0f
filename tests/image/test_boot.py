"""The built image boots under SeaBIOS and under OVMF to an SSH login as root,
with a key that exists only for this test and is handed in at boot through the
OpenNebula CONTEXT CD (cloud-init's OpenNebula datasource installs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import guest
import pytest

from appliance_build.artifacts import ImageArtifacts
from appliance_build.vm import appliance

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_to_ssh_with_key_from_context(
    firmware: str,
    image_file: Path,
    accel: Any,
    artifacts: ImageArtifacts,
    timings: dict[str, Any],
    tmp_path: Path,
) -> None:
    before = image_file.stat().st_mtime_ns
    with appliance.boot(image_file, tmp_path, {}, firmware=firmware, accel=accel) as booted:
        try:
            with guest.connect(booted) as host:
                efi = host.file("/sys/firmware/efi").is_directory
                keys = host.file("/root/.ssh/authorized_keys").content_string
                machine_id = host.file("/etc/machine-id").content
        finally:
            booted.collect(artifacts.scenario_results(f"boot-{firmware}"))
    timings[f"boot-{firmware}"] = {"ssh_login_s": round(booted.ssh_seconds, 1)}
    assert efi is (firmware == "uefi"), "booted through the firmware asked for"
    assert len([line for line in keys.splitlines() if line]) == 1, (
        "exactly the key from the context, nothing left from the build"
    )
    assert len(machine_id) == 33, "a machine-id generated on this first boot (32 hex digits and a newline)"
    assert image_file.stat().st_mtime_ns == before, "tests must never write the built image"
