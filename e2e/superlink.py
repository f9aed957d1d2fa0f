"""The run's SuperLink: appliance_build.flower.superlink, plus what the e2e run needs.

:class:`appliance_build.flower.superlink.SuperLink` starts ``flower-superlink``
with a fixed argv. The e2e run also needs

- ``--database``: a SuperLink restarted on the same state keeps the SuperNodes'
  node ids, so they reconnect by themselves (without it the new SuperLink
  answers 401 to the old ids and the SuperNode processes exit);
- ``--disable-runtime-dependency-installation``: the ServerApp must not
  ``uv sync`` the app's dependencies (no internet; flwr and numpy are there);
- a private ``FLWR_HOME`` (installed FABs) and no telemetry / update check.

So :class:`E2eSuperLink` keeps the base class's start/stop (process-group kill by pid)
and only adds arguments and its environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance_build.errors import BuildError
from appliance_build.flower.superlink import SuperLink, TlsFiles
from appliance_build.vm.launcher import free_port

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for every Flower process of the run.

    This interpreter's bin directory goes first on PATH: flower-superlink and
    flower-supernode start ``flower-superexec`` (and it ``flwr-serverapp`` /
    ``flwr-clientapp``) by name, also when the venv is not activated.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    return {**os.environ, **QUIET_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


def flower_exe(name: str) -> str:
    """A Flower console script from this interpreter's environment (or PATH)."""
    beside = Path(sys.executable).parent / name
    exe = str(beside) if beside.exists() else shutil.which(name)
    if exe is None:
        raise BuildError(f"{name} is not installed in this environment (pip install flwr==1.42.0)")
    return exe


@dataclass
class E2eSuperLink(SuperLink):
    database: Path | None = None
    flwr_home: Path = field(default_factory=lambda: Path("flwr-home"))
    starts: int = 0

    def argv(self) -> list[str]:
        _, *args = super().argv()
        extra = ["--disable-runtime-dependency-installation"]
        if self.database is not None:
            extra += ["--database", str(self.database)]
        return [flower_exe("flower-superlink"), *args, *extra]

    def environment(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

    def start(self, timeout: float = 120) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        if self.database is not None:
            self.database.parent.mkdir(parents=True, exist_ok=True)
        super().start(timeout)
        self.starts += 1

    def restart(self, pause: float = 5.0) -> None:
        """Stop it (by its pid), wait `pause` seconds, start it again on the same port and state."""
        self.stop()
        time.sleep(pause)
        self.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


@contextlib.contextmanager
def running(
    log: Path,
    *,
    flwr_home: Path,
    tls: TlsFiles | None = None,
    database: Path | None = None,
    port: int | None = None,
    start: bool = True,
) -> Iterator[E2eSuperLink]:
    """An E2eSuperLink, stopped on exit; `start=False` only reserves the port (start it later)."""
    link = E2eSuperLink(port or free_port(), log, tls, database=database, flwr_home=flwr_home)
    try:
        if start:
            link.start()
        yield link
    finally:
        link.stop()
