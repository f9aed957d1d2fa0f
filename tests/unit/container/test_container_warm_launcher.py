"""The warm ClientApp launcher and its flwr-clientapp shim, with a fake ClientApp entry.

The shim is the generated script the entrypoint writes, run as the container runs it
(``python -I -S``); the launcher is ``python -m supernode_container.warm_clientapp`` serving
``fake_clientapp:main`` (see that module for what each token makes it do).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Deployment, stop

from supernode_container import flwr_clientapp_shim as shim


def first_json(text: str) -> dict[str, object]:
    doc = json.loads(text.splitlines()[0])
    assert isinstance(doc, dict)
    return doc


def test_task_runs_warm_with_its_own_stdio_env_cwd_and_exit_code(deployment: Deployment) -> None:
    deployment.start_launcher()
    result = deployment.run_shim("exit-3", TASK_VAR="from the task")
    assert result.returncode == 3, result.stderr
    seen = first_json(result.stdout)
    assert seen["mode"] == "warm"
    assert seen["argv"] == [
        "flwr-clientapp",
        "--runtime-api-address",
        "127.0.0.1:9094",
        "--token",
        "exit-3",
        "--insecure",
    ]
    assert seen["task_var"] == "from the task"
    assert seen["blas"] is None  # the launcher's OPENBLAS_NUM_THREADS=1 is not the task's environment
    assert seen["cwd"] == str(deployment.root)
    assert "stderr of exit-3" in result.stderr
    # signal state of a fresh interpreter, in the shim's process group
    assert "default_int_handler" in str(seen["sigint"])
    assert seen["sigterm"] == str(int(signal.SIG_DFL))
    assert seen["blocked"] == []
    assert seen["pgid"] == os.getpgid(0)
    assert seen["pid"] != deployment.launcher.pid if deployment.launcher else False
    events = deployment.events_after_exit()
    assert [e["mode"] for e in events if e["event"] == "shim"] == ["warm"]
    assert [e["status"] for e in events if e["event"] == "exit"] == [3]


@pytest.mark.parametrize("token, code", [("exit-0", 0), ("exit-1", 1), ("exit-42", 42), ("raise", 1)])
def test_exit_codes_pass_through(deployment: Deployment, token: str, code: int) -> None:
    deployment.start_launcher()
    result = deployment.run_shim(token)
    assert result.returncode == code, result.stderr
    if token == "raise":
        assert "RuntimeError: the fake ClientApp failed" in result.stderr  # the traceback, on the task's stderr


def test_a_crashing_child_is_reported_as_its_signal_and_the_launcher_serves_on(deployment: Deployment) -> None:
    launcher = deployment.start_launcher()
    crashed = deployment.run_shim("segv")
    assert crashed.returncode == -signal.SIGSEGV, crashed.stderr
    after = deployment.run_shim("exit-5")
    assert after.returncode == 5
    assert launcher.poll() is None
    exits = [e for e in deployment.events_after_exit(2) if e["event"] == "exit"]
    assert [e["status"] for e in exits] == [-signal.SIGSEGV, 5]


def test_no_launcher_falls_back_to_the_real_program_at_once(deployment: Deployment) -> None:
    started = time.monotonic()
    result = deployment.run_shim("exit-7")  # nothing listens on deployment.socket
    assert result.returncode == 7
    assert first_json(result.stdout)["mode"] == "real"
    assert time.monotonic() - started < 10
    (fallback,) = deployment.events("shim")
    assert fallback["mode"] == "fallback" and "FileNotFoundError" in fallback["reason"]


def test_a_launcher_that_does_not_answer_costs_at_most_the_timeout(deployment: Deployment) -> None:
    """A socket that accepts but never OFFERs (a hung launcher): fallback after FL_WARM_CLIENTAPP_TIMEOUT."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(deployment.socket))
        hung.listen(8)
        started = time.monotonic()
        result = deployment.run_shim("exit-9", **{shim.ENV_TIMEOUT: "1.5"})
        waited = time.monotonic() - started
    assert result.returncode == 9
    assert first_json(result.stdout)["mode"] == "real"
    assert 1.5 <= waited < 1.5 + 8  # the bound, plus two interpreter start-ups on a busy host
    (fallback,) = deployment.events("shim")
    assert "TimeoutError" in fallback["reason"]


def test_a_stale_socket_of_a_dead_launcher_falls_back(deployment: Deployment) -> None:
    launcher = deployment.start_launcher()
    launcher.kill()  # SIGKILL: no chance to remove its socket
    launcher.wait()
    assert deployment.socket.exists()
    result = deployment.run_shim("exit-4")
    assert result.returncode == 4
    assert first_json(result.stdout)["mode"] == "real"
    assert "ConnectionRefusedError" in deployment.events("shim")[0]["reason"]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--runtime-api-address", "127.0.0.1:9094", "--token-file", "/tmp/token"],
        ["--runtime-api-address", "127.0.0.1:9094", "--token", "exit-0", "--some-new-flwr-option"],
    ],
)
def test_other_command_lines_go_to_the_real_program(deployment: Deployment, args: list[str]) -> None:
    deployment.start_launcher()
    argv = [sys.executable, "-IS", str(deployment.shim), *args]
    subprocess.run(argv, env=deployment.env(), capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert [e["mode"] for e in deployment.events("shim")] == ["fallback"]
    assert not deployment.events("fork")


def test_the_launcher_dying_mid_task_does_not_lose_the_task(deployment: Deployment) -> None:
    launcher = deployment.start_launcher()
    proc = subprocess.Popen(
        deployment.shim_argv("sleep-2"),
        env=deployment.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not deployment.events("start"):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        launcher.kill()
        launcher.wait()
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, err  # the child reported its own status
    assert first_json(out.decode())["mode"] == "warm"
    assert [e["mode"] for e in deployment.events("shim")] == ["warm"]


def test_sigterm_to_the_shim_reaches_the_child(deployment: Deployment) -> None:
    deployment.start_launcher()
    proc = subprocess.Popen(
        deployment.shim_argv("term"),
        env=deployment.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        deadline = time.monotonic() + 30
        while not any("waiting for SIGTERM" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143  # the child's handler ran: sys.exit(143)
    finally:
        stop(proc)
    assert [e["status"] for e in deployment.events_after_exit(1) if e["event"] == "exit"] == [143]


def test_sigterm_kills_a_child_with_default_handling(deployment: Deployment) -> None:
    deployment.start_launcher()
    proc = subprocess.Popen(
        deployment.shim_argv("sleep-30"),
        env=deployment.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not deployment.events("shim-child"):
            assert time.monotonic() < deadline, "no child"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # the shim dies of the child's signal, as stock would
    finally:
        stop(proc)
    assert [e["status"] for e in deployment.events_after_exit(1) if e["event"] == "exit"] == [-signal.SIGTERM]


def test_tasks_run_concurrently_and_children_are_reaped(deployment: Deployment) -> None:
    launcher = deployment.start_launcher()
    procs = [
        subprocess.Popen(
            deployment.shim_argv("sleep-1"),
            env=deployment.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(4)
    ]
    started = time.monotonic()
    try:
        assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    finally:
        for proc in procs:
            stop(proc)
    assert time.monotonic() - started < 3.5 + 10  # not one after the other (4 s), bar a very busy host
    assert len([e for e in deployment.events_after_exit(4) if e["event"] == "exit"]) == 4
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    assert children == []  # no zombie left
    assert os.listdir(f"/proc/{launcher.pid}/task") == [str(launcher.pid)]  # single-threaded


def test_the_launcher_removes_its_socket_on_sigterm(deployment: Deployment) -> None:
    launcher = deployment.start_launcher()
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 0
    assert not deployment.socket.exists()
