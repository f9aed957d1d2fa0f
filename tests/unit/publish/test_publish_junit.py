"""JUnit XML reading and tested-image.json writing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from publish_testlib import FakeBuild

from appliance_build.artifacts import BuildTree
from appliance_build.publish import PublishError, read_junit, record_tested_image


def test_counts_over_every_testsuite(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1" time="2.5">'
        '<testcase classname="a" name="t1"><failure message="boom"/></testcase>'
        '<testcase classname="a" name="t2"><skipped message="no gpu"/></testcase>'
        '<testcase classname="a" name="t3"/><testcase classname="a" name="t4"/></testsuite>'
        '<testsuite tests="2" failures="0" errors="1" skipped="0" time="1.0">'
        '<testcase classname="b" name="t5"><error message="setup failed"/></testcase>'
        '<testcase classname="b" name="t6"/></testsuite></testsuites>'
    )
    counts = read_junit(junit)
    assert (counts.tests, counts.failures, counts.errors, counts.skipped, counts.passed) == (6, 1, 1, 1, 3)
    assert counts.time_s == 3.5
    assert not counts.ok
    assert [(c.name, c.outcome, c.message) for c in counts.not_passed] == [
        ("a.t1", "failure", "boom"),
        ("a.t2", "skipped", "no gpu"),
        ("b.t5", "error", "setup failed"),
    ]


def test_single_testsuite_root(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite tests="2" failures="0" errors="0" skipped="0"><testcase name="x"/></testsuite>')
    assert read_junit(junit).ok


@pytest.mark.parametrize(
    ("text", "message"),
    [("<testsuites", "not valid XML"), ("<html/>", "not JUnit XML"), ('<testsuite tests="many"/>', "not a number")],
)
def test_bad_junit(tmp_path: Path, text: str, message: str) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(text)
    with pytest.raises(PublishError, match=message):
        read_junit(junit)


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="no JUnit XML"):
        read_junit(tmp_path / "nope.xml")
    with pytest.raises(PublishError, match="nothing was tested"):
        record_tested_image(BuildTree(tmp_path).image("supernode-cpu"), tmp_path / "junit.xml")


def test_junit_outside_test_results_is_recorded_by_absolute_path(
    tmp_path: Path, fake_build: Callable[[str], FakeBuild]
) -> None:
    build = fake_build("cpu")
    elsewhere = tmp_path / "elsewhere.xml"
    elsewhere.write_text('<testsuite tests="1" failures="0" errors="0" skipped="0"/>')
    assert record_tested_image(build.out, elsewhere)["junit"] == str(elsewhere.resolve())
