"""Fixtures for the GPU validation script tests; the helpers live in gpu_scripts_support.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make the support module importable whatever pytest import mode is used.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from gpu_scripts_support import Sandbox, make_host, make_vm  # noqa: E402


@pytest.fixture
def vm(tmp_path: Path) -> Sandbox:
    """Sandbox for scripts/validate-gpu.sh: a healthy GPU VM."""
    return make_vm(tmp_path)


@pytest.fixture
def host(tmp_path: Path) -> Sandbox:
    """Sandbox for scripts/validate-host-gpu.sh: a correctly prepared KVM host."""
    return make_host(tmp_path)
