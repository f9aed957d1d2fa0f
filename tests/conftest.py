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


def pytest_sessionstart(session: pytest.Session) -> None:
    """A missing host tool stops the run naming its package: tests never skip for want of a tool
    (setup-host.sh installs every one of appliance_build/host-tools.tsv)."""
    from appliance_build import host_tools

    try:
        host_tools.require("tests")
    except host_tools.MissingToolError as exc:
        raise pytest.UsageError(str(exc)) from None
