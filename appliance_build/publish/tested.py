"""Which file the in-image tests passed for, and which scenarios ran: the tested record
(ImageArtifacts.tested_record, build/<image>/test-results/tested-image.json).

    {"sha256": "<sha256 of the qcow2 the tests booted>", "junit": "junit.xml", "variant": "gpu",
     "passed": true, "reasons": [], "gpu_passthrough_verified": false,
     "totals": {"tests": 31, "passed": 24, "failed": 0, "errors": 0, "skipped": 7},
     "scenarios": {"default": {"tests": 12, "passed": 12, "failed": 0, "errors": 0, "skipped": 0}, ...}}

`nox -s test_cpu` / `test_gpu` call :func:`record_tested_image` after pytest (also when
tests failed: then `passed` is false). Publishing compares `sha256` with the qcow2 it
is about to publish, so an image rebuilt after its tests is never published as tested.

A scenario is one booted configuration of the image (tests/image/conftest.py records it
as the JUnit property `scenario` of every test case, skipped ones included). `passed`
means: nothing failed or errored, and every scenario in :data:`REQUIRED_SCENARIOS` of the
image's variant has at least one test that passed; skipped tests prove nothing, so an
all-skipped run or scenario is never "passed". GPU passthrough needs a GPU on the test
host: it is reported apart, as `gpu_passthrough_verified`, and publishing an image where it
is false needs --allow-unverified-gpu.
"""

from __future__ import annotations

import contextlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import ImageArtifacts, Manifest
from .digests import sha256_of
from .errors import PublishError

SCENARIO_PROPERTY = "scenario"

GPU_PASSTHROUGH = "gpu-passthrough"
GPU_FALLBACK = "gpu-requested-absent"
_COMMON_SCENARIOS = ("boot-bios", "boot-uefi", "default", "bad-context", GPU_FALLBACK)
REQUIRED_SCENARIOS: dict[str, tuple[str, ...]] = {
    "cpu": _COMMON_SCENARIOS,
    "gpu": (*_COMMON_SCENARIOS, GPU_PASSTHROUGH),
}
"""The scenarios (tests/image/conftest.py SCENARIOS) whose tests must have run and passed
before an image of each variant is published. On the GPU image, GPU_PASSTHROUGH is judged
apart (it needs a GPU on the test host, see :class:`Verdict`), and a run that verified it
need not have run GPU_FALLBACK: with a GPU passed through, no-GPU cannot be observed."""


@dataclass(frozen=True)
class CaseResult:
    name: str
    outcome: str  # failure | error | skipped
    message: str
    scenario: str = ""


@dataclass(frozen=True)
class ScenarioCounts:
    tests: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def ran_and_passed(self) -> bool:
        """At least one test passed, none failed or errored (skips alone prove nothing)."""
        return self.passed > 0 and self.failed == 0 and self.errors == 0

    def as_dict(self) -> dict[str, int]:
        return {
            "tests": self.tests,
            "passed": self.passed,
            "failed": self.failed,
            "errors": self.errors,
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.passed, "passed"),
                (self.failed, "failed"),
                (self.errors, "errors"),
                (self.skipped, "skipped"),
            )
            if n
        ]
        return ", ".join(parts) or "no tests"


@dataclass(frozen=True)
class JunitCounts:
    tests: int
    failures: int
    errors: int
    skipped: int
    time_s: float
    not_passed: tuple[CaseResult, ...] = field(default=())
    scenarios: dict[str, ScenarioCounts] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return max(self.tests - self.failures - self.errors - self.skipped, 0)

    @property
    def ok(self) -> bool:
        """Nothing failed or errored, and at least one test passed (an all-skipped run is not ok)."""
        return self.failures == 0 and self.errors == 0 and self.passed > 0

    def summary(self) -> str:
        return (
            f"{self.tests} tests: {self.passed} passed, {self.failures} failures, "
            f"{self.errors} errors, {self.skipped} skipped"
        )

    def totals(self) -> dict[str, int]:
        return {
            "tests": self.tests,
            "passed": self.passed,
            "failed": self.failures,
            "errors": self.errors,
            "skipped": self.skipped,
        }

    def skip_reason(self, scenario: str) -> str:
        """The first skip message of a scenario ("" if none)."""
        return next((c.message for c in self.not_passed if c.scenario == scenario and c.outcome == "skipped"), "")


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
    per_scenario: dict[str, dict[str, int]] = {}
    for case in root.iter("testcase"):
        scenario = _scenario_of(case)
        tally = per_scenario.setdefault(scenario, dict.fromkeys(("tests", "passed", "failed", "errors", "skipped"), 0))
        tally["tests"] += 1
        for outcome, key in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            child = case.find(outcome)
            if child is not None:
                name = ".".join(p for p in (case.get("classname", ""), case.get("name", "")) if p)
                message = (child.get("message") or child.text or "").strip().splitlines()
                cases.append(CaseResult(name, outcome, message[0] if message else "", scenario))
                tally[key] += 1
                break
        else:
            tally["passed"] += 1
    scenarios = {name: ScenarioCounts(**tally) for name, tally in sorted(per_scenario.items())}
    return JunitCounts(tests, failures, errors, skipped, round(time_s, 1), tuple(cases), scenarios)


def _scenario_of(case: ET.Element) -> str:
    """The test case's `scenario` property; without one, its test module (e.g. test_boot), which
    names where it came from but never stands in for a required scenario."""
    for prop in case.iterfind("properties/property"):
        if prop.get("name") == SCENARIO_PROPERTY and prop.get("value"):
            return str(prop.get("value"))
    classname = case.get("classname") or case.get("name") or "unknown"
    return classname.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Verdict:
    """What a JUnit run proves about an image of one variant."""

    variant: str
    passed: bool
    reasons: tuple[str, ...]  # why not passed, each naming its scenarios
    gpu_passthrough_verified: bool | None  # None: not a GPU image
    gpu_unverified_reason: str = ""  # why not verified, naming the scenario and its skip message


def _names(items: list[str]) -> str:
    return ", ".join(items)


def evaluate(counts: JunitCounts, variant: str) -> Verdict:
    """Judge a run against :data:`REQUIRED_SCENARIOS` of `variant`."""
    if variant not in REQUIRED_SCENARIOS:
        raise PublishError(f"variant {variant!r} is neither cpu nor gpu")
    scenarios = counts.scenarios
    reasons: list[str] = []
    broken = [f"{name} ({s.summary()})" for name, s in scenarios.items() if s.failed or s.errors]
    if broken:
        reasons.append(f"failures or errors in: {_names(broken)}")
    elif counts.failures or counts.errors:  # counted by the testsuite but in no test case
        reasons.append(f"the JUnit XML reports {counts.failures} failures and {counts.errors} errors")
    if counts.tests and counts.passed == 0:
        reasons.append(f"no test passed: all {counts.tests} were skipped")
    elif counts.tests == 0:
        reasons.append("the JUnit XML has no tests")

    gpu_verified: bool | None = None
    gpu_reason = ""
    if variant == "gpu":
        passthrough = scenarios.get(GPU_PASSTHROUGH, ScenarioCounts())
        # every passthrough test, not just one: a partly skipped passthrough check verifies only part of it
        gpu_verified = passthrough.ran_and_passed and passthrough.passed == passthrough.tests
        if not gpu_verified:
            if passthrough.tests == 0:
                gpu_reason = f"scenario {GPU_PASSTHROUGH} did not run"
            else:
                skip = counts.skip_reason(GPU_PASSTHROUGH)
                gpu_reason = f"scenario {GPU_PASSTHROUGH}: {passthrough.summary()}" + (f" ({skip})" if skip else "")

    skipped: list[str] = []
    missing: list[str] = []
    for name in REQUIRED_SCENARIOS[variant]:
        if name == GPU_PASSTHROUGH or (name == GPU_FALLBACK and gpu_verified):
            continue
        s = scenarios.get(name)
        if s is None:
            missing.append(name)
        elif s.passed == 0 and not (s.failed or s.errors):
            skip = counts.skip_reason(name)
            skipped.append(f"{name} ({s.skipped} skipped" + (f": {skip})" if skip else ")"))
    if skipped:
        reasons.append(f"required scenarios skipped, so not tested: {_names(skipped)}")
    if missing:
        reasons.append(f"required scenarios missing from the run: {_names(missing)}")
    return Verdict(variant, not reasons, tuple(reasons), gpu_verified, gpu_reason)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def record_tested_image(image: ImageArtifacts, junit_path: Path) -> dict[str, Any]:
    """Write the tested record (test-results/tested-image.json) for the qcow2 of `image`.

    `passed` is the :func:`evaluate` verdict for the image's variant (from its manifest).
    Returns what was written.
    """
    junit_path = Path(junit_path)
    if not image.qcow2.is_file():
        raise PublishError(f"no image {image.qcow2}: nothing was tested")
    variant = Manifest.load(image.manifest).variant
    counts = read_junit(junit_path)
    verdict = evaluate(counts, variant)
    results = image.test_results
    results.mkdir(parents=True, exist_ok=True)
    try:
        junit_ref = str(junit_path.resolve().relative_to(results.resolve()))
    except ValueError:
        junit_ref = str(junit_path.resolve())
    record: dict[str, Any] = {
        "sha256": sha256_of(image.qcow2),
        "junit": junit_ref,
        "variant": variant,
        "passed": verdict.passed,
        "reasons": list(verdict.reasons),
    }
    if verdict.gpu_passthrough_verified is not None:
        record["gpu_passthrough_verified"] = verdict.gpu_passthrough_verified
    record["totals"] = counts.totals()
    record["scenarios"] = {name: s.as_dict() for name, s in counts.scenarios.items()}
    _write_json_atomically(image.tested_record, record)
    return record


def junit_of(image: ImageArtifacts, record: dict[str, Any]) -> Path:
    """The JUnit XML a tested record names (relative to test-results/, or absolute)."""
    ref = Path(str(record.get("junit") or ""))
    return ref if ref.is_absolute() else image.test_results / ref


def read_tested_record(image: ImageArtifacts) -> dict[str, Any] | None:
    path = image.tested_record
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path}: expected a JSON object")
    return data


def read_boot_times(image: ImageArtifacts) -> dict[str, Any]:
    path = image.boot_times
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path}: not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}
