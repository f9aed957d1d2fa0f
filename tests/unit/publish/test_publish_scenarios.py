"""Tested means the tests ran: per-scenario counts, required scenarios, skipped GPU passthrough."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from publish_testlib import URL_PREFIX, Case, FakeBuild, counted_run, full_run, junit_xml

from appliance_build.paths import REPO
from appliance_build.publish import Refused, publish, read_junit
from appliance_build.publish.cli import main
from appliance_build.publish.marketplace import GPU_UNVERIFIED
from appliance_build.publish.tested import GPU_FALLBACK, GPU_PASSTHROUGH, REQUIRED_SCENARIOS, evaluate

Make = Callable[[str], FakeBuild]
CPU_REQUIRED = ("boot-bios", "boot-uefi", "default", "bad-context", "gpu-requested-absent")


def _junit(tmp_path: Path, cases: list[Case], *, properties: bool = True) -> Path:
    path = tmp_path / "junit.xml"
    path.write_text(junit_xml(cases, properties=properties))
    return path


def _all_skipped(variant: str) -> list[Case]:
    return [(scenario, "skipped") for scenario, _ in full_run(variant)]


# --- the image tests emit the scenarios ---------------------------------------------------

PLUGIN = textwrap.dedent("""
    import json, pytest

    def pytest_collection_finish(session):
        print("SCENARIOS " + json.dumps({i.nodeid: dict(i.user_properties).get("scenario") for i in session.items}))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item):
        pytest.skip("skipped by the unit test before any fixture (no VM is booted)")
""")


def _run_image_tests_skipped(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """tests/image, collected for real with its conftest, every test skipped before its fixtures."""
    (tmp_path / "skip_everything.py").write_text(PLUGIN)
    junit = tmp_path / "junit.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "skip_everything",
            "tests/image",
            f"--junitxml={junit}",
            f"--rootdir={REPO}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("SCENARIOS "))
    return json.loads(line.removeprefix("SCENARIOS ")), junit


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def test_image_tests_emit_every_required_scenario(tmp_path: Path) -> None:
    scenarios, _ = _run_image_tests_skipped(tmp_path)
    assert scenarios, "no image test collected"
    assert all(scenarios.values()), [node for node, s in scenarios.items() if not s]
    emitted = set(scenarios.values())
    for variant, required in REQUIRED_SCENARIOS.items():
        assert set(required) <= emitted, f"{variant}: {set(required) - emitted} emitted by no image test"
    boot = {node.split("::")[-1]: s for node, s in scenarios.items() if "test_boot.py" in node}
    assert boot == {
        "test_boots_to_ssh_with_key_from_context[bios]": "boot-bios",
        "test_boots_to_ssh_with_key_from_context[uefi]": "boot-uefi",
    }


def test_an_all_skipped_image_test_run_is_not_passed_and_not_published(
    tmp_path: Path, fake_build: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real image tests' JUnit XML, every test skipped: recorded as not passed, refused by name."""
    _, junit = _run_image_tests_skipped(tmp_path)
    build = fake_build("cpu")
    build.results.mkdir(parents=True)
    (build.results / "junit.xml").write_text(junit.read_text())
    assert main(["record-tested", build.name, "--build-root", str(build.root)]) == 1
    out = capsys.readouterr().out
    assert "NOT passed" in out and "no test passed: all" in out
    record = json.loads((build.tested_record).read_text())
    assert record["passed"] is False
    assert record["totals"]["passed"] == 0 and record["totals"]["skipped"] == record["totals"]["tests"] > 0
    assert record["scenarios"]["default"]["skipped"] == record["scenarios"]["default"]["tests"] > 0
    with pytest.raises(Refused) as refusal:
        publish(build.name, URL_PREFIX, build.tree)
    message = str(refusal.value)
    assert "the tests did not pass for this image" in message
    assert "required scenarios skipped, so not tested:" in message
    for scenario in CPU_REQUIRED:
        assert f"{scenario} (" in message, scenario
    assert not build.bundle.exists()


# --- reading per-scenario counts -------------------------------------------------------------


def test_counts_per_scenario(tmp_path: Path) -> None:
    cases: list[Case] = [
        ("default", "passed"),
        ("default", "skipped"),
        ("default", "failure"),
        ("bad-context", "error"),
        ("bad-context", "passed"),
        ("boot-bios", "skipped"),
    ]
    counts = read_junit(_junit(tmp_path, cases))
    assert {name: s.as_dict() for name, s in counts.scenarios.items()} == {
        "bad-context": {"tests": 2, "passed": 1, "failed": 0, "errors": 1, "skipped": 0},
        "boot-bios": {"tests": 1, "passed": 0, "failed": 0, "errors": 0, "skipped": 1},
        "default": {"tests": 3, "passed": 1, "failed": 1, "errors": 0, "skipped": 1},
    }
    assert [c.scenario for c in counts.not_passed] == ["default", "default", "bad-context", "boot-bios"]
    assert counts.totals() == {"tests": 6, "passed": 2, "failed": 1, "errors": 1, "skipped": 2}


def test_without_the_property_a_case_counts_under_its_module_only(tmp_path: Path) -> None:
    counts = read_junit(_junit(tmp_path, full_run("cpu"), properties=False))
    assert set(counts.scenarios) == {
        "test_boot_bios",
        "test_boot_uefi",
        "test_default",
        "test_bad_context",
        "test_gpu_requested_absent",
    }
    verdict = evaluate(counts, "cpu")
    assert not verdict.passed
    assert verdict.reasons == (f"required scenarios missing from the run: {', '.join(CPU_REQUIRED)}",)


def test_all_skipped_is_never_ok(tmp_path: Path) -> None:
    counts = read_junit(_junit(tmp_path, _all_skipped("cpu")))
    assert counts.tests == counts.skipped == 10
    assert not counts.ok


# --- the verdict --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_a_full_run_passes(tmp_path: Path, variant: str) -> None:
    verdict = evaluate(read_junit(_junit(tmp_path, full_run(variant))), variant)
    assert verdict.passed and verdict.reasons == ()
    assert verdict.gpu_passthrough_verified is (True if variant == "gpu" else None)


def test_all_skipped_run_names_every_skipped_scenario(tmp_path: Path) -> None:
    verdict = evaluate(read_junit(_junit(tmp_path, _all_skipped("cpu"))), "cpu")
    assert not verdict.passed
    assert verdict.reasons == (
        "no test passed: all 10 were skipped",
        "required scenarios skipped, so not tested: "
        + ", ".join(f"{s} (2 skipped: skipped on this image)" for s in CPU_REQUIRED),
    )


def test_one_all_skipped_scenario_is_not_passed(tmp_path: Path) -> None:
    cases = [(s, "skipped" if s == "bad-context" else o) for s, o in full_run("cpu")]
    verdict = evaluate(read_junit(_junit(tmp_path, cases)), "cpu")
    assert not verdict.passed
    assert verdict.reasons == (
        "required scenarios skipped, so not tested: bad-context (2 skipped: skipped on this image)",
    )


def test_some_skips_in_a_scenario_that_also_passed_are_fine(tmp_path: Path) -> None:
    cases = [*full_run("cpu"), (GPU_FALLBACK, "skipped"), ("toolkit-local-fixture", "skipped")]
    assert evaluate(read_junit(_junit(tmp_path, cases)), "cpu").passed


def test_a_missing_scenario_is_named(tmp_path: Path) -> None:
    cases = [(s, o) for s, o in full_run("cpu") if s not in ("default", "boot-uefi")]
    verdict = evaluate(read_junit(_junit(tmp_path, cases)), "cpu")
    assert verdict.reasons == ("required scenarios missing from the run: boot-uefi, default",)


def test_a_failure_names_its_scenario(tmp_path: Path) -> None:
    verdict = evaluate(read_junit(_junit(tmp_path, counted_run("cpu", failures=1))), "cpu")
    assert verdict.reasons == ("failures or errors in: boot-bios (1 passed, 1 failed)",)
    # a failure in a scenario no variant requires counts as much
    cases = [*full_run("cpu"), ("toolkit-local-fixture", "error")]
    assert evaluate(read_junit(_junit(tmp_path, cases)), "cpu").reasons == (
        "failures or errors in: toolkit-local-fixture (1 errors)",
    )


def test_gpu_passthrough_skipped_is_unverified_but_passed(tmp_path: Path) -> None:
    verdict = evaluate(read_junit(_junit(tmp_path, full_run("gpu", gpu=False))), "gpu")
    assert verdict.passed
    assert verdict.gpu_passthrough_verified is False
    assert verdict.gpu_unverified_reason == (
        f"scenario {GPU_PASSTHROUGH}: 2 skipped (no GPU was passed through: run with --vfio <PCI address> on a KVM "
        "host with a vfio-bound GPU)"
    )


def test_gpu_passthrough_missing_or_partly_skipped_is_unverified(tmp_path: Path) -> None:
    cases = [(s, o) for s, o in full_run("gpu") if s != GPU_PASSTHROUGH]
    verdict = evaluate(read_junit(_junit(tmp_path, cases)), "gpu")
    assert verdict.gpu_passthrough_verified is False
    assert verdict.gpu_unverified_reason == f"scenario {GPU_PASSTHROUGH} did not run"
    cases = [*full_run("gpu"), (GPU_PASSTHROUGH, "skipped")]
    assert evaluate(read_junit(_junit(tmp_path, cases)), "gpu").gpu_passthrough_verified is False


def test_a_verified_gpu_passthrough_stands_in_for_the_no_gpu_fallback(tmp_path: Path) -> None:
    """With a GPU passed through, the no-GPU scenario skips; that run still qualifies the GPU image."""
    cases = [(s, "skipped" if s == GPU_FALLBACK else o) for s, o in full_run("gpu")]
    verdict = evaluate(read_junit(_junit(tmp_path, cases)), "gpu")
    assert verdict.passed and verdict.gpu_passthrough_verified is True
    # without the passthrough run, the fallback is required again
    cases = [(s, "skipped" if s in (GPU_FALLBACK, GPU_PASSTHROUGH) else o) for s, o in full_run("gpu")]
    verdict = evaluate(read_junit(_junit(tmp_path, cases)), "gpu")
    assert not verdict.passed
    assert any(r.startswith(f"required scenarios skipped, so not tested: {GPU_FALLBACK} (") for r in verdict.reasons)
    # and the CPU image never waives it
    cases = [(s, "skipped" if s == GPU_FALLBACK else o) for s, o in full_run("cpu")] + [(GPU_PASSTHROUGH, "passed")]
    assert not evaluate(read_junit(_junit(tmp_path, cases)), "cpu").passed


# --- record-tested ---------------------------------------------------------------------------


def test_record_tested_writes_per_scenario_counts(fake_build: Make, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build("gpu")
    build.write_tests([*full_run("gpu", gpu=False), ("toolkit-local-fixture", "skipped")])
    assert main(["record-tested", build.name, "--build-root", str(build.root)]) == 0
    out = capsys.readouterr().out
    assert "13 tests: 10 passed, 0 failures, 0 errors, 3 skipped; passed for sha256" in out
    assert "GPU passthrough not verified (publishing needs --allow-unverified-gpu)" in out
    record = json.loads((build.tested_record).read_text())
    assert record["variant"] == "gpu" and record["passed"] is True and record["reasons"] == []
    assert record["gpu_passthrough_verified"] is False
    assert record["totals"] == {"tests": 13, "passed": 10, "failed": 0, "errors": 0, "skipped": 3}
    assert record["scenarios"][GPU_PASSTHROUGH] == {"tests": 2, "passed": 0, "failed": 0, "errors": 0, "skipped": 2}
    assert record["scenarios"]["default"] == {"tests": 2, "passed": 2, "failed": 0, "errors": 0, "skipped": 0}
    assert "gpu_passthrough_verified" not in fake_build("cpu").tested_and_recorded().record()


def test_record_tested_names_what_did_not_pass(fake_build: Make, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build("cpu")
    build.write_tests([(s, o) for s, o in full_run("cpu") if s != "bad-context"])
    assert main(["record-tested", build.name, "--build-root", str(build.root)]) == 1
    assert "  not passed: required scenarios missing from the run: bad-context" in capsys.readouterr().out
    record = json.loads((build.tested_record).read_text())
    assert record["passed"] is False
    assert record["reasons"] == ["required scenarios missing from the run: bad-context"]


# --- publishing ---------------------------------------------------------------------------------


def test_publish_refuses_a_record_of_an_older_laxer_rule(fake_build: Make) -> None:
    """A record that says passed for an all-skipped JUnit file is judged again from the JUnit XML."""
    build = fake_build("cpu").tested_and_recorded(_all_skipped("cpu"))
    tested = build.tested_record
    record = json.loads(tested.read_text())
    tested.write_text(json.dumps({"sha256": record["sha256"], "junit": "junit.xml", "passed": True}))
    with pytest.raises(Refused, match=r"now reports 10 tests: 0 passed.*skipped, so not tested: boot-bios \("):
        publish(build.name, URL_PREFIX, build.tree)
    assert not build.bundle.exists()


def test_publish_refuses_a_missing_scenario(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded([(s, o) for s, o in full_run("cpu") if s != "default"])
    with pytest.raises(Refused, match=r"the tests did not pass.*required scenarios missing from the run: default"):
        publish(build.name, URL_PREFIX, build.tree)


def test_gpu_unverified_is_refused_without_the_flag(fake_build: Make, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build("gpu").tested_and_recorded(full_run("gpu", gpu=False))
    with pytest.raises(Refused) as refusal:
        publish(build.name, URL_PREFIX, build.tree)
    message = str(refusal.value)
    assert message.startswith(f"{GPU_UNVERIFIED} (scenario {GPU_PASSTHROUGH}: 2 skipped (no GPU was passed through")
    assert "--allow-unverified-gpu" in message and "nox -s test_gpu -- --vfio" in message
    assert not build.bundle.exists()
    argv = ["publish", build.name, "--url-prefix", URL_PREFIX, "--build-root", str(build.root)]
    assert main(argv) == 2
    assert "--allow-unverified-gpu" in capsys.readouterr().err
    assert not build.bundle.exists()


def test_gpu_unverified_with_the_flag_says_so(fake_build: Make, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build("gpu").tested_and_recorded(full_run("gpu", gpu=False))
    argv = ["publish", build.name, "--url-prefix", URL_PREFIX, "--build-root", str(build.root)]
    assert main([*argv, "--allow-unverified-gpu"]) == 0
    notes = (build.bundle / "RELEASE_NOTES.md").read_text()
    assert f"**{GPU_UNVERIFIED}**: scenario {GPU_PASSTHROUGH}: 2 skipped (no GPU was passed through" in notes
    assert f"| {GPU_PASSTHROUGH} | yes | 2 | 0 | 0 | 0 | 2 |" in notes
    description = yaml.safe_load((build.bundle / f"{build.name}.marketplace.yaml").read_text())["description"]
    assert GPU_UNVERIFIED in description
    artifact = json.loads((build.bundle / "artifact.json").read_text())
    assert artifact["tested"]["gpu_passthrough_verified"] is False


@pytest.mark.parametrize("allow", [False, True])
def test_verified_gpu_and_cpu_images_claim_nothing_unverified(fake_build: Make, allow: bool) -> None:
    for variant in ("gpu", "cpu"):
        build = fake_build(variant).tested_and_recorded()
        out = publish(build.name, URL_PREFIX, build.tree, allow_unverified_gpu=allow)
        assert GPU_UNVERIFIED not in (out / "RELEASE_NOTES.md").read_text()
        assert GPU_UNVERIFIED not in (out / f"{build.name}.marketplace.yaml").read_text()


def test_a_cpu_image_needs_no_gpu_passthrough(fake_build: Make) -> None:
    build = fake_build("cpu").tested_and_recorded([*full_run("cpu"), (GPU_PASSTHROUGH, "skipped")])
    assert publish(build.name, URL_PREFIX, build.tree).is_dir()


def test_publish_cli_handles_sigterm_like_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[tuple[int, Callable[[int, object], None]]] = []
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.append((signum, handler)))
    assert main(["vm-template", "cpu", "supernode-cpu"]) == 0
    ((signum, handler),) = installed
    assert signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)
