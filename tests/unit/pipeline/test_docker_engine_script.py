"""provision/10-docker-engine.sh: CDI is merged into daemon.json (other keys kept, a bad file
refused) for Docker >= 25 only, and the packages the build names are installed only where missing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance_build import config
from appliance_build.paths import PROVISION_DIR
from appliance_build.stages import render

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


FAKE_DPKG_QUERY = """#!/bin/sh
# installed: the names in $INSTALLED; the last argument is the package
for last; do :; done
case " $INSTALLED " in *" $last "*) printf installed ;; *) printf not-installed ;; esac
"""
FAKE_APT_GET = '#!/bin/sh\necho "$*" >> "$APT_LOG"\n'
STOP_HERE = "#!/bin/sh\nexit 97\n"  # `install -d /etc/docker`: the package part is over


def run_package_part(tmp_path: Path, wanted: str, installed: str) -> tuple[int, list[str]]:
    """The script with fake dpkg-query/apt-get on PATH, stopped at its first step after the packages."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in {"dpkg-query": FAKE_DPKG_QUERY, "apt-get": FAKE_APT_GET, "install": STOP_HERE}.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    log = tmp_path / "apt.log"
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "APT_LOG": str(log), "INSTALLED": installed}
    env["FLOWER_BASE_PACKAGES"] = wanted
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


def test_only_missing_packages_are_installed(tmp_path: Path) -> None:
    code, apt = run_package_part(tmp_path, "docker.io apparmor docker-cli jq=1.7.1-6", installed="docker.io")
    assert code == 97
    assert apt[0].startswith("update ")
    assert apt[1:] == ["install -y -q --no-install-recommends apparmor docker-cli jq=1.7.1-6"]


def test_a_bootstrapped_base_installs_nothing(tmp_path: Path) -> None:
    code, apt = run_package_part(tmp_path, "docker.io apparmor docker-cli", installed="docker.io apparmor docker-cli")
    assert (code, apt) == (97, [])


def test_no_package_list_stops_the_step(tmp_path: Path) -> None:
    code, apt = run_package_part(tmp_path, "", installed="")
    assert code not in (0, 97) and apt == []


@pytest.mark.parametrize("name", ["supernode-cpu", "supernode-gpu", "supernode-cpu-debian12"])
def test_the_build_names_the_engine_the_chroot_installs(name: str) -> None:
    image = config.load(name)
    wanted = render.provision_env(image, image.flower.image_tag)["FLOWER_BASE_PACKAGES"].split()
    assert wanted[0] == "docker.io"
    assert set(wanted) <= set(image.base.extra_packages)  # all of them at host speed, none left to the VM
