"""A fake build tree for the publishing tests: a small real qcow2 (qemu-img create),
its .sha256, a manifest shaped like appliance_build.build's, JUnit XML and boot times,
each where appliance_build.artifacts puts it."""

from __future__ import annotations

import hashlib
import html
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance_build.artifacts import BuildTree, ImageArtifacts, Manifest
from appliance_build.paths import REPO
from appliance_build.publish import record_tested_image
from appliance_build.publish.tested import GPU_PASSTHROUGH, REQUIRED_SCENARIOS
from tests.fixtures.manifests import sample_manifest

REFERENCE_DIR = REPO.parent / "shared" / "reference" / "marketplace"
"""The published marketplace files, read from ../shared/reference/marketplace/ (never copied)."""
REFERENCE_YAMLLINT = REFERENCE_DIR / ".yamllint.yml"
VIRTUAL_BYTES = 64 * 1024 * 1024
URL_PREFIX = "https://downloads.example.org/flower/nightly/"


def need_reference() -> None:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"{REFERENCE_DIR} is absent (the reference marketplace files live outside the repository)")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


Case = tuple[str, str]
"""(scenario, outcome): outcome is passed, failure, error or skipped."""

MESSAGES = {
    "failure": "AssertionError: superlink not reached",
    "error": "fixture boot failed",
    "skipped": "skipped on this image",
}
SKIP_MESSAGES = {
    GPU_PASSTHROUGH: "no GPU was passed through: run with --vfio <PCI address> on a KVM host with a vfio-bound GPU",
    "toolkit-local-fixture": "this image already carries a Container Toolkit; the fixture route would replace it",
}
EXTRA_SCENARIO = "toolkit-local-fixture"  # a scenario no variant requires


def full_run(variant: str, *, gpu: bool = True) -> list[Case]:
    """Two passing tests in every required scenario of the variant; gpu=False: the GPU
    passthrough tests skipped, as on a test host without a GPU (no --vfio)."""
    cases: list[Case] = []
    for scenario in REQUIRED_SCENARIOS[variant]:
        outcome = "skipped" if scenario == GPU_PASSTHROUGH and not gpu else "passed"
        cases += [(scenario, outcome), (scenario, outcome)]
    return cases


def counted_run(variant: str, *, failures: int = 0, errors: int = 0, skipped: int = 0, gpu: bool = True) -> list[Case]:
    """full_run with its first passing tests turned into `failures`, then `errors`, and
    `skipped` more tests, skipped, in a scenario no variant requires."""
    cases = full_run(variant, gpu=gpu)
    turn = ["failure"] * failures + ["error"] * errors
    for i, (scenario, outcome) in enumerate(cases):
        if turn and outcome == "passed":
            cases[i] = (scenario, turn.pop(0))
    return cases + [(EXTRA_SCENARIO, "skipped")] * skipped


def junit_xml(cases: list[Case], *, properties: bool = True) -> str:
    """pytest-style JUnit XML; properties=False leaves out the `scenario` property."""
    body = []
    for i, (scenario, outcome) in enumerate(cases):
        inner = ""
        if properties:
            inner += f'<properties><property name="scenario" value="{scenario}" /></properties>'
        if outcome != "passed":
            message = SKIP_MESSAGES.get(scenario, MESSAGES[outcome]) if outcome == "skipped" else MESSAGES[outcome]
            kind = ' type="pytest.skip"' if outcome == "skipped" else ""
            inner += f'<{outcome}{kind} message="{html.escape(message)}">trace</{outcome}>'
        classname = f"tests.image.test_{scenario.replace('-', '_')}"
        body.append(f'<testcase classname="{classname}" name="test_{i}" time="1.5">{inner}</testcase>')
    count = {o: sum(1 for _, c in cases if c == o) for o in ("failure", "error", "skipped")}
    return (
        '<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">'
        f'<testsuite name="pytest" errors="{count["error"]}" failures="{count["failure"]}" '
        f'skipped="{count["skipped"]}" tests="{len(cases)}" time="{1.5 * len(cases):.1f}" '
        'timestamp="2026-07-22T03:30:00" hostname="ci">' + "".join(body) + "</testsuite></testsuites>"
    )


@dataclass
class FakeBuild:
    tree: BuildTree  # build/
    name: str
    variant: str

    @property
    def root(self) -> Path:
        return self.tree.root

    @property
    def out(self) -> ImageArtifacts:
        return self.tree.image(self.name)

    @property
    def dir(self) -> Path:
        return self.out.root

    @property
    def qcow2(self) -> Path:
        return self.out.qcow2

    @property
    def sha_file(self) -> Path:
        return self.out.sha256

    @property
    def results(self) -> Path:
        return self.out.test_results

    @property
    def tested_record(self) -> Path:
        return self.out.tested_record

    @property
    def bundle(self) -> Path:
        return self.tree.bundle(self.name)

    def manifest(self) -> dict[str, Any]:
        """The manifest as raw JSON, for the tests that break it."""
        return json.loads(self.out.manifest.read_text())  # type: ignore[no-any-return]

    def write_manifest(self, manifest: dict[str, Any] | Manifest) -> None:
        if isinstance(manifest, Manifest):
            manifest.write(self.out.manifest)
        else:
            self.out.manifest.write_text(json.dumps(manifest, indent=2) + "\n")

    def typed_manifest(self) -> Manifest:
        return Manifest.load(self.out.manifest)

    def make_image(self, virtual_bytes: int = VIRTUAL_BYTES) -> None:
        """A (re)build: a new qcow2 with its .sha256 and manifest, as finalize/build write them."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.qcow2.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.qcow2), str(virtual_bytes)], check=True)
        digest = sha256(self.qcow2)
        self.sha_file.write_text(f"{digest}  {self.qcow2.name}\n")
        self.write_manifest(fake_manifest(self.name, self.variant, digest, self.qcow2.stat().st_size, virtual_bytes))

    def write_tests(self, cases: list[Case] | None = None, **counts: Any) -> Path:
        """A JUnit file: `cases`, else counted_run(variant, **counts)."""
        self.results.mkdir(parents=True, exist_ok=True)
        junit = self.out.junit
        junit.write_text(junit_xml(cases if cases is not None else counted_run(self.variant, **counts)))
        self.out.boot_times.write_text(json.dumps({"default-context": 41.2, "reboot": 35.0}, indent=2) + "\n")
        return junit

    def record(self) -> dict[str, Any]:
        return record_tested_image(self.out, self.out.junit)

    def tested_and_recorded(self, cases: list[Case] | None = None, **counts: Any) -> FakeBuild:
        self.write_tests(cases, **counts)
        self.record()
        return self


def fake_manifest(name: str, variant: str, digest: str, file_bytes: int, virtual_bytes: int) -> Manifest:
    return sample_manifest(name, variant, sha256=digest, file_bytes=file_bytes, virtual_bytes=virtual_bytes)
