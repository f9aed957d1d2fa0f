"""Shared fixtures: every test gets its own build and cache directories."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_BUILD_DIR", str(tmp_path / "build"))
    if "FLOWER_CACHE_DIR" not in __import__("os").environ:
        monkeypatch.setenv("FLOWER_CACHE_DIR", str(tmp_path / "cache"))
