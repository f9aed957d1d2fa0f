"""The hash locks of the SuperNode container: every requirement pinned to one version and
hash-pinned (what `pip download --require-hashes` insists on), flwr pinned to the lock's
name, and nothing that points pip at an index other than the one it is run with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from appliance_build import config
from appliance_build.paths import IMAGES_DIR

LOCKS = sorted((IMAGES_DIR / "locks").glob("flwr-*.txt"))
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def requirements(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes), from pip-compile's `name==version \\ --hash=...` blocks."""
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("--"):
            continue
        spec, *options = line.split(" --hash=")
        req = Requirement(spec.strip())
        (specifier,) = req.specifier
        assert specifier.operator == "==", line
        pins[req.name.lower()] = (specifier.version, [f"--hash={o.strip()}" for o in options])
    return pins


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_every_requirement_is_pinned_with_hashes(lock: Path) -> None:
    pins = requirements(lock)
    # flwr-<version>.txt or flwr-<version>-py<XY>.txt
    assert pins["flwr"][0] == lock.stem.removeprefix("flwr-").split("-py")[0]
    for name, (_, hashes) in pins.items():
        assert hashes and all(HASH.fullmatch(h) for h in hashes), name


def test_flwr_1_42_lock() -> None:
    lock = IMAGES_DIR / "locks/flwr-1.42.0.txt"
    pins = requirements(lock)
    assert pins["flwr"][0] == "1.42.0"
    # flwr 1.42.0 requires certifi>=2026.10.19; PyPI's newest is 2026.10.19.post1
    assert Version(pins["certifi"][0]) >= Version("2026.10.19")
    assert len(pins) >= 50
    text = lock.read_text()
    # resolved against PyPI alone: no local index, find-links or extra index baked in
    assert not re.search(r"^\s*--(?:index-url|extra-index-url|find-links|trusted-host)", text, re.MULTILINE)
    assert config.LOCK_PYTHON_RE.findall(text) == ["3.13"]
    assert config.FLWR_PIN_RE.findall(text) == ["1.42.0"]


def test_flwr_1_42_lock_for_python_3_11() -> None:
    """Debian 12's container (CPython 3.11) runs flwr 1.42.0 too: the same pins as the cp313
    lock but numpy, whose 2.5 releases need Python >= 3.12."""
    lock = IMAGES_DIR / "locks/flwr-1.42.0-py311.txt"
    pins, cp313 = requirements(lock), requirements(IMAGES_DIR / "locks/flwr-1.42.0.txt")
    assert pins["flwr"][0] == "1.42.0"
    assert Version(pins["numpy"][0]) < Version("2.5")
    assert {n: v for n, (v, _) in pins.items() if n != "numpy"} == {n: v for n, (v, _) in cp313.items() if n != "numpy"}
    text = lock.read_text()
    assert not re.search(r"^\s*--(?:index-url|extra-index-url|find-links|trusted-host)", text, re.MULTILINE)
    assert config.LOCK_PYTHON_RE.findall(text) == ["3.11"]
    assert config.FLWR_PIN_RE.findall(text) == ["1.42.0"]
