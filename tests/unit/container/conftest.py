"""Fixtures of the warm ClientApp launcher tests: a launcher running a fake ClientApp (no flwr
import, fast) and the generated shim, run the way flower-superexec runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supernode_container import entrypoint
from supernode_container import flwr_clientapp_shim as shim

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
FAKE_ENTRY = "fake_clientapp:main"


def python_path() -> str:
    return os.pathsep.join([str(HERE), str(REPO)])


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop one process we started, by its pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


def wait_until(ready: Callable[[], object], what: str, timeout: float, proc: subprocess.Popen[Any]) -> None:
    """Poll `ready()` until it is true; fail naming `what` if `proc` exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"launcher exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Deployment:
    """A launcher's socket, a launch log, the shim and a fake real flwr-clientapp in tmp_path."""

    root: Path
    socket: Path
    log: Path
    shim: Path
    real: Path
    launcher: subprocess.Popen[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": python_path(),
            shim.ENV_SOCKET: str(self.socket),
            shim.ENV_LOG: str(self.log),
            shim.ENV_REAL: str(self.real),
            **extra,
        }
        env.pop("FAKE_REAL", None)
        return env

    def start_launcher(self, entry: str | None = FAKE_ENTRY, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "supernode_container.warm_clientapp", "--socket", str(self.socket)]
        if entry is not None:
            argv += ["--entry", entry]
        with (self.root / "launcher.log").open("ab") as out:
            self.launcher = subprocess.Popen(
                argv, env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        # The launcher binds its socket first and logs "ready" just after: wait for both, or a
        # loaded machine reads the log in between.
        wait_until(self.socket.exists, f"{self.socket} appeared", timeout, self.launcher)
        wait_until(lambda: self.events("ready"), "the ready event was logged", timeout, self.launcher)
        return self.launcher

    def shim_argv(self, token: str, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-IS",
            str(self.shim),
            "--runtime-api-address",
            "127.0.0.1:9094",
            "--token",
            token,
            "--insecure",
            *extra,
        ]

    def run_shim(self, token: str, *extra: str, timeout: float = 60.0, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.shim_argv(token, *extra),
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in read_log(self.log) if name is None or e["event"] == name]

    def events_after_exit(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The events once `count` "exit" events are logged: the launcher answers the shim first
        and logs the exit after, so a shim that has returned can be ahead of the log."""
        deadline = time.monotonic() + timeout
        while len(self.events("exit")) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / shim.PROGRAM
    script.write_text(entrypoint.shim_script(sys.executable))
    script.chmod(0o755)
    real = tmp_path / "real" / shim.PROGRAM
    real.parent.mkdir()
    real.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path[:0] = {python_path().split(os.pathsep)!r}\n"
        "from fake_clientapp import real\nsys.exit(real())\n"
    )
    real.chmod(0o755)
    dep = Deployment(tmp_path, tmp_path / "server.sock", tmp_path / "launches.jsonl", script, real)
    try:
        yield dep
    finally:
        if dep.launcher is not None:
            stop(dep.launcher)
