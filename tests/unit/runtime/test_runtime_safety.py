"""Property tests: no context value is ever executed, and no shell is ever used.

Canary programs named like the things hostile values try to run sit first on
PATH; each writes a marker file when started. subprocess and os.system are
wrapped so any shell=True or string command fails the test.
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from runtime_testlib import LSMOD_WITH_NVIDIA, FakeRoot

from supernode_runtime.context_parser import format_context, parse_context
from supernode_runtime.paths import Paths
from supernode_runtime.variables import VARIABLES

CANARIES = ("canary", "id", "touch", "rm", "reboot", "curl", "wget", "nc", "sh", "bash", "sleep")

HOSTILE = [
    "$(canary)",
    "`canary`",
    "; canary",
    "| canary",
    "&& canary",
    "\ncanary\n",
    "'; canary; '",
    '"; canary; "',
    "$(touch /tmp/pwned)",
    "10.0.0.5:8000; reboot",
    "YES$(id)",
    "0,1`rm -rf /`",
    'a="$(canary)" b=`id`',
    "a=1 ; canary",
    "x' ; canary #",
    "${IFS}canary",
    "\\$(canary)",
    "http://127.0.0.1:9/$(canary)",
]

hostile_values = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=60))
names = st.sampled_from(
    [v.name for v in VARIABLES] + [v.oneapp_name for v in VARIABLES] + ["ONEGATE_ENDPOINT"]
)


@pytest.fixture(scope="module")
def canary_env() -> Iterator[tuple[Path, Path]]:
    """A PATH with canaries plus working fake lsmod / nvidia-smi."""
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        marker = Path(tmp) / "EXECUTED"
        for name in CANARIES:
            script = bin_dir / name
            script.write_text(f'#!/bin/sh\n/bin/echo "{name} $*" >> "{marker}"\n')
            script.chmod(0o755)
        lsmod_out = Path(tmp) / "lsmod.out"
        lsmod_out.write_text(LSMOD_WITH_NVIDIA)
        (bin_dir / "lsmod").write_text(f'#!/bin/sh\n/bin/cat "{lsmod_out}"\n')
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        for name in ("lsmod", "nvidia-smi"):
            (bin_dir / name).chmod(0o755)
        old_path = os.environ.get("PATH", "")
        os.environ["PATH"] = str(bin_dir)
        try:
            yield bin_dir, marker
        finally:
            os.environ["PATH"] = old_path


@pytest.fixture
def no_shell(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every program started; fail on shell=True or a string command."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    class CheckedPopen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, args: Any, *a: Any, **kw: Any) -> None:
            assert not kw.get("shell"), f"shell=True used for {args!r}"
            assert isinstance(args, list), f"command is not an argv list: {args!r}"
            assert all(isinstance(x, str) for x in args)
            started.append(list(args))
            super().__init__(args, *a, **kw)

    def forbidden(*args: Any, **kw: Any) -> None:
        raise AssertionError(f"shell API used: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", CheckedPopen)
    monkeypatch.setattr(os, "system", forbidden)
    monkeypatch.setattr(os, "popen", forbidden)
    monkeypatch.setattr(os, "execvp", forbidden)
    return started


def _allowed(argv: list[str]) -> bool:
    return Path(argv[0]).name in {"lsmod", "nvidia-smi"} and len(argv) == 1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.dictionaries(names, hostile_values, max_size=8), st.booleans())
@example({"FL_NODE_CONFIG": 'a="$(canary)" b="`canary`" c=\'; canary\''}, True)
@example({"ONEGATE_ENDPOINT": "http://127.0.0.1:9/$(canary)", "FL_SUPERLINK_ADDRESS": ""}, True)
@example({"ONEAPP_FL_CUDA_VISIBLE_DEVICES": "0,1`canary`"}, True)
def test_boot_never_executes_context_values(
    canary_env: tuple[Path, Path],
    no_shell: list[list[str]],
    values: dict[str, str],
    gpu: bool,
) -> None:
    _, marker = canary_env
    # A valid base so many examples get through to GPU detection and the launch spec;
    # the generated (hostile) values override it.
    values = {"FL_SUPERLINK_ADDRESS": "10.0.0.5:8000", "VMID": "42", **values}
    if gpu:
        values = {**values, "ONEAPP_FL_GPU_ENABLED": "YES"}
    with tempfile.TemporaryDirectory() as tmp:
        root = FakeRoot(Paths.from_root(Path(tmp)), io.StringIO())
        root.write_build_info()
        root.write_context(values, raw_text=format_context(values))
        result = root.boot()
        assert not marker.exists(), marker.read_text()
        assert all(_allowed(argv) for argv in no_shell), no_shell
        if result.argv is not None:
            argv = root.spec()["argv"]
            assert argv[:2] == ["docker", "run"]
            node_config = result.report.config["FL_NODE_CONFIG"]["value"]
            if node_config:
                # passed through as exactly one argv element, unchanged
                assert argv[argv.index("--node-config") + 1] == node_config
        else:
            assert not root.paths.launch_spec.exists()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_parser_never_executes_anything(
    canary_env: tuple[Path, Path], no_shell: list[list[str]], text: str
) -> None:
    _, marker = canary_env
    parse_context(text + "\nX='$(canary)'\nY='`canary`'\n")
    assert no_shell == []
    assert not marker.exists()


def test_canaries_would_detect_execution(canary_env: tuple[Path, Path]) -> None:
    """The canary mechanism itself works (so the properties above can fail)."""
    bin_dir, marker = canary_env
    subprocess.run([str(bin_dir / "canary"), "probe"], check=True)
    try:
        assert marker.read_text() == "canary probe\n"
    finally:
        marker.unlink()
