"""Fixtures for the publishing tests (helpers live in publish_testlib)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from publish_testlib import FakeBuild

from appliance_build.artifacts import BuildTree


@pytest.fixture
def build_root() -> BuildTree:
    return BuildTree.default()  # tmp_path/build: tests/conftest.py sets FLOWER_BUILD_DIR per test


@pytest.fixture
def fake_build(build_root: BuildTree) -> Callable[[str], FakeBuild]:
    """fake_build("cpu") / fake_build("gpu"): a built (not yet tested) image in a tmp build root."""

    def make(variant: str) -> FakeBuild:
        build = FakeBuild(build_root, f"supernode-{variant}", variant)
        build.make_image()
        return build

    return make
