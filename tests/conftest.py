"""Shared fixtures: unit tests get their own build and cache directories; tests that
boot real VMs (marker `vm`) use the real XDG cache, so a base image or a probe
result made once is reused, as in a real build."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_dirs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("vm"):
        return
    monkeypatch.setenv("FLOWER_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("FLOWER_CACHE_DIR", str(tmp_path / "cache"))
