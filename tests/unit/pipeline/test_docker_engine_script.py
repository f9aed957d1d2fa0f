"""provision/10-docker-engine.sh: CDI is merged into daemon.json (other keys kept, a bad file
refused) for Docker >= 25 only, and docker-cli is installed where it is its own package."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance_build.paths import PROVISION_DIR

SCRIPT = PROVISION_DIR / "10-docker-engine.sh"


def merge_program() -> str:
    """The python3 program of the script's `python3 - /etc/docker/daemon.json <<'PY'` heredoc."""
    match = re.search(r"python3 - /etc/docker/daemon\.json <<'PY'\n(.*?)\nPY\n", SCRIPT.read_text(), re.DOTALL)
    assert match, "the daemon.json merge moved"
    return match[1]


def merge(tmp_path: Path, content: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = tmp_path / "daemon.json"
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-", str(path)], input=merge_program(), capture_output=True, text=True)
    return proc, path


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # what the script writes on a fresh engine
        ({"log-driver": "journald"}, {"log-driver": "journald", "features": {"cdi": True}}),
        # what nvidia-ctk runtime configure adds, and another feature flag: both kept
        (
            {
                "log-driver": "journald",
                "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
                "features": {"containerd-snapshotter": False},
            },
            {
                "log-driver": "journald",
                "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
                "features": {"containerd-snapshotter": False, "cdi": True},
            },
        ),
        ({"features": {"cdi": False}}, {"features": {"cdi": True}}),
    ],
)
def test_cdi_merged_without_clobbering(tmp_path: Path, before: dict[str, object], after: dict[str, object]) -> None:
    proc, path = merge(tmp_path, json.dumps(before))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(path.read_text()) == after
    assert not (tmp_path / "daemon.json.new").exists()


@pytest.mark.parametrize("content", ["[]", '{"features": ["cdi"]}', "{not json"])
def test_unreadable_daemon_json_fails_the_step(tmp_path: Path, content: str) -> None:
    proc, path = merge(tmp_path, content)
    assert proc.returncode != 0
    assert path.read_text() == content  # left as it was


@pytest.mark.parametrize(
    ("version", "cdi"),
    [("26.1.5+dfsg1-9+deb13u1+b1", True), ("25.0.0+dfsg1-1", True), ("20.10.24+dfsg1-1+deb12u1+b6", False)],
)
def test_cdi_only_from_docker_25(version: str, cdi: bool) -> None:
    assert 'dpkg --compare-versions "$engine" ge 25' in SCRIPT.read_text()
    proc = subprocess.run(["dpkg", "--compare-versions", version, "ge", "25"], check=False)
    assert (proc.returncode == 0) == cdi


def test_docker_cli_installed_when_the_archive_has_it() -> None:
    text = SCRIPT.read_text()
    assert "apt-cache show --no-all-versions docker-cli" in text and "engine_packages+=(docker-cli)" in text
