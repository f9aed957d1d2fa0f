"""Which file the in-image tests passed for: test-results/tested-image.json.

    {"sha256": "<sha256 of the qcow2 the tests booted>", "junit": "junit.xml", "passed": true}

`nox -s test_cpu` / `test_gpu` call :func:`record_tested_image` after pytest (also when
tests failed: then `passed` is false). Publishing compares `sha256` with the qcow2 it
is about to publish, so an image rebuilt after its tests is never published as tested.
"""

from __future__ import annotations

import contextlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .digests import sha256_of
from .errors import PublishError

RESULTS_DIR = "test-results"
TESTED_FILE = "tested-image.json"
JUNIT_FILE = "junit.xml"
BOOT_TIMES_FILE = "boot-to-ready.json"


@dataclass(frozen=True)
class CaseResult:
    name: str
    outcome: str  # failure | error | skipped
    message: str


@dataclass(frozen=True)
class JunitCounts:
    tests: int
    failures: int
    errors: int
    skipped: int
    time_s: float
    not_passed: tuple[CaseResult, ...] = field(default=())

    @property
    def passed(self) -> int:
        return max(self.tests - self.failures - self.errors - self.skipped, 0)

    @property
    def ok(self) -> bool:
        """What counts as "the tests passed": something ran, nothing failed or errored."""
        return self.failures == 0 and self.errors == 0 and self.tests > 0

    def summary(self) -> str:
        return (
            f"{self.tests} tests: {self.passed} passed, {self.failures} failures, "
            f"{self.errors} errors, {self.skipped} skipped"
        )


def _int(element: ET.Element, name: str, path: Path) -> int:
    raw = element.get(name, "0")
    try:
        return int(raw)
    except ValueError:
        raise PublishError(f"{path}: <{element.tag} {name}={raw!r}> is not a number") from None


def read_junit(path: Path) -> JunitCounts:
    """Totals over every <testsuite> of a JUnit XML file (pytest --junitxml and others)."""
    if not path.is_file():
        raise PublishError(f"no JUnit XML at {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise PublishError(f"{path}: not valid XML: {exc}") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    if root.tag not in ("testsuite", "testsuites"):
        raise PublishError(f"{path}: not JUnit XML (root element <{root.tag}>)")
    if not suites:
        suites = [root]  # <testsuites> carrying the totals itself
    tests = failures = errors = skipped = 0
    time_s = 0.0
    for suite in suites:
        tests += _int(suite, "tests", path)
        failures += _int(suite, "failures", path)
        errors += _int(suite, "errors", path)
        skipped += _int(suite, "skipped", path)
        with contextlib.suppress(ValueError):
            time_s += float(suite.get("time", "0"))
    cases: list[CaseResult] = []
    for case in root.iter("testcase"):
        for outcome in ("failure", "error", "skipped"):
            child = case.find(outcome)
            if child is not None:
                name = ".".join(p for p in (case.get("classname", ""), case.get("name", "")) if p)
                message = (child.get("message") or child.text or "").strip().splitlines()
                cases.append(CaseResult(name, outcome, message[0] if message else ""))
                break
    return JunitCounts(tests, failures, errors, skipped, round(time_s, 1), tuple(cases))


def qcow2_path(image_dir: Path) -> Path:
    return image_dir / f"{image_dir.name}.qcow2"


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def record_tested_image(image_dir: Path, junit_path: Path) -> dict[str, Any]:
    """Write <image_dir>/test-results/tested-image.json for the qcow2 in `image_dir`.

    `passed` is true when the JUnit XML has at least one test and no failure or error.
    Returns what was written.
    """
    image_dir = Path(image_dir)
    junit_path = Path(junit_path)
    qcow2 = qcow2_path(image_dir)
    if not qcow2.is_file():
        raise PublishError(f"no image {qcow2}: nothing was tested")
    counts = read_junit(junit_path)
    results = image_dir / RESULTS_DIR
    results.mkdir(parents=True, exist_ok=True)
    try:
        junit_ref = str(junit_path.resolve().relative_to(results.resolve()))
    except ValueError:
        junit_ref = str(junit_path.resolve())
    record = {"sha256": sha256_of(qcow2), "junit": junit_ref, "passed": counts.ok}
    _write_json_atomically(results / TESTED_FILE, record)
    return record


def read_tested_record(image_dir: Path) -> dict[str, Any] | None:
    path = image_dir / RESULTS_DIR / TESTED_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path}: expected a JSON object")
    return data


def read_boot_times(image_dir: Path) -> dict[str, Any]:
    path = image_dir / RESULTS_DIR / BOOT_TIMES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path}: not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}
