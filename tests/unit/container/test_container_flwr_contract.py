"""What the warm launcher relies on in flwr, checked against the installed flwr: a new flwr that
changes the SubprocessExecutor's command line or the flwr-clientapp entry point fails here.

- flwr/supercore/superexec/executor/subprocess_executor.py: ``SubprocessExecutor.launch`` builds
  ``flwr-clientapp --runtime-api-address A --token T [--insecure | --root-certificates P]
  [--parent-pid N] [--allow-runtime-dependency-installation]``; the shim hands over exactly that
  form, and flwr's own parser must read it the same way.
- flwr's entry_points.txt: ``flwr-clientapp = flwr.supernode.cli:flwr_clientapp``; the launcher's
  light import of flwr/supernode/cli/flwr_clientapp.py yields that same function.
- the environment variables the container sets exist in flwr's source.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Deployment

from supernode_container import flwr_clientapp_shim as shim
from supernode_container import warm_clientapp
from supernode_container.entrypoint import QUIET_ENV

FLWR = Path(importlib.metadata.distribution("flwr").locate_file("flwr"))


def executor_argv(monkeypatch: pytest.MonkeyPatch, **spec: Any) -> list[str]:
    """The argv SubprocessExecutor.launch passes to Popen for a ClientApp task."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    calls: list[list[str]] = []

    class FakePopen:
        def __init__(self, args: list[str], **kwargs: Any) -> None:
            calls.append(list(args))

    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", FakePopen)
    fields = {
        "task_type": TaskType.CLIENT_APP,
        "runtime_api_address": "127.0.0.1:9094",
        "token": "abc123",
        "insecure": False,
        "root_certificates_path": None,
        "runtime_dependency_install": False,
        "parent_pid": None,
        "suppress_output": False,
        "task_id": 7,
        **spec,
    }
    subprocess_executor.SubprocessExecutor().launch(ExecutionSpec(**fields))
    (argv,) = calls
    return argv


CASES = [
    dict(
        zip(
            ("insecure", "root_certificates_path", "parent_pid", "runtime_dependency_install", "suppress_output"),
            combo,
            strict=True,
        )
    )
    for combo in itertools.product([True, False], [None, "/app/ca.pem"], [None, 4242], [False, True], [False, True])
    if not (combo[0] and combo[1])
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_the_shim_parses_what_the_subprocess_executor_launches(
    monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any]
) -> None:
    from flwr.supernode.cli.flwr_clientapp import _parse_args_run_flwr_clientapp

    argv = executor_argv(monkeypatch, **spec)
    assert argv[0] == shim.PROGRAM == warm_clientapp.CONSOLE_SCRIPT
    parsed = shim.parse_executor_argv(argv[1:])
    assert parsed is not None, f"the shim would not hand over {argv}: flwr changed the executor's command line"
    assert parsed["runtime_api_address"] == "127.0.0.1:9094" and parsed["token"] == "abc123"
    assert parsed.get("insecure", False) == spec["insecure"]
    assert parsed.get("root_certificates") == (None if spec["insecure"] else spec["root_certificates_path"])
    assert parsed.get("parent_pid") == (None if spec["parent_pid"] is None else str(spec["parent_pid"]))
    assert parsed.get("runtime_dependency_install", False) == spec["runtime_dependency_install"]
    flwr_args = _parse_args_run_flwr_clientapp().parse_args(argv[1:])  # flwr's own reading agrees
    assert (flwr_args.runtime_api_address, flwr_args.token, flwr_args.insecure, flwr_args.parent_pid) == (
        "127.0.0.1:9094",
        "abc123",
        spec["insecure"],
        spec["parent_pid"],
    )


def test_every_option_of_the_executor_is_one_flwr_clientapp_accepts() -> None:
    from flwr.supernode.cli.flwr_clientapp import _parse_args_run_flwr_clientapp

    known = {option for action in _parse_args_run_flwr_clientapp()._actions for option in action.option_strings}
    assert set(shim._OPTIONS) <= known


def test_the_console_script_is_the_entry_point_the_launcher_loads() -> None:
    assert warm_clientapp.console_script_target() == warm_clientapp.ENTRY_POINT
    assert (FLWR / "supernode" / "cli" / "flwr_clientapp.py").is_file()
    probe = (
        "import importlib.metadata, json, sys\n"
        "from supernode_container import warm_clientapp as w\n"
        "entry, how = w.load_entry()\n"
        "light = {'how': how, 'full_cli': w.FULL_CLI_MODULE in sys.modules, 'modules': len(sys.modules)}\n"
        "import flwr.supernode.cli\n"
        "(ep,) = importlib.metadata.entry_points(group='console_scripts', name='flwr-clientapp')\n"
        "light['same_as_package'] = flwr.supernode.cli.flwr_clientapp is entry\n"
        "light['same_as_console_script'] = ep.load() is entry\n"
        "print(json.dumps(light))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(out.stdout.splitlines()[-1])
    assert doc["how"] == "light" and not doc["full_cli"], doc
    assert doc["same_as_package"] and doc["same_as_console_script"], doc


@pytest.mark.parametrize(
    "name, source",
    [
        ("FLWR_TELEMETRY_ENABLED", "supercore/telemetry.py"),
        ("FLWR_DISABLE_UPDATE_CHECK", "supercore/constant.py"),
        ("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "supercore/superexec/run_superexec.py"),
    ],
)
def test_the_environment_variables_exist_in_flwr(name: str, source: str) -> None:
    assert f'"{name}"' in (FLWR / source).read_text()
    if name in QUIET_ENV:
        assert QUIET_ENV[name] in ("0", "1")


def test_the_claim_window_is_what_the_launcher_is_for() -> None:
    text = (FLWR / "common" / "constant.py").read_text()
    assert re.search(r"^HEARTBEAT_DEFAULT_INTERVAL = 30$", text, re.M)


def test_the_real_launcher_runs_flwr_clientapp_and_never_loads_a_gpu_library(deployment: Deployment) -> None:
    """flwr's ClientApp runtime imported once, single-threaded, no CUDA or torch in its memory map; a
    child runs flwr's own flwr_clientapp() (here it stops at once: its --parent-pid is gone)."""
    launcher = deployment.start_launcher(entry=None, timeout=120)
    (ready,) = deployment.events("ready")
    assert ready["how"] == "light" and ready["gpu_modules"] == [] and not ready["flower_supernode"]
    maps = Path(f"/proc/{launcher.pid}/maps").read_text()
    assert not re.search(r"libcuda|libcudart|libtorch|libnvrtc|libcudnn|libtensorflow", maps)
    assert len(list(Path(f"/proc/{launcher.pid}/task").iterdir())) == 1
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    result = deployment.run_shim("x" * 16, "--parent-pid", gone.stdout.strip(), timeout=120)
    assert "Start `flwr-clientapp` process" in result.stderr, result.stderr
    assert [e["mode"] for e in deployment.events("shim")] == ["warm"]
    (exit_event,) = [e for e in deployment.events_after_exit(1) if e["event"] == "exit"]
    assert result.returncode == exit_event["status"]  # the child's status, passed through
