"""Run a real `flower-superlink` on 127.0.0.1 for the appliances under test.

Guests on QEMU user networking reach it as 10.0.2.2:<port>. It is started with
its own process group and stopped by that pid; its log is kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..progress import kill_group
from ..vm.launcher import free_port

GUEST_GATEWAY = "10.0.2.2"  # the host's loopback, seen from a QEMU user-net guest


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass
class SuperLink:
    port: int
    log: Path
    tls: TlsFiles | None
    process: subprocess.Popen[bytes] | None = None

    @property
    def guest_address(self) -> str:
        return f"{GUEST_GATEWAY}:{self.port}"

    @property
    def host_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """The flower-superlink command line (subclasses add arguments)."""
        exe = shutil.which("flower-superlink") or str(Path(sys.executable).parent / "flower-superlink")
        if not Path(exe).exists():
            raise BuildError("flower-superlink is not installed in this environment (pip install flwr==1.42.0)")
        argv = [exe, "--host", "127.0.0.1", "--port", str(self.port)]
        if self.tls is None:
            return [*argv, "--insecure"]
        return [
            *argv,
            "--ssl-ca-certfile",
            str(self.tls.ca_cert),
            "--ssl-certfile",
            str(self.tls.server_cert),
            "--ssl-keyfile",
            str(self.tls.server_key),
        ]

    def environment(self) -> dict[str, str]:
        """The SuperLink starts flower-superexec by name: its own bin directory must be on PATH."""
        exe_dir = Path(self.argv()[0]).parent
        return dict(os.environ, PATH=f"{exe_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def start(self, timeout: float = 120) -> None:
        argv = self.argv()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BuildError(f"flower-superlink exited ({self.process.returncode}); log {self.log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.5)
        self.stop()
        raise BuildError(f"flower-superlink did not listen on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process, grace=15)
            self.process = None


@contextlib.contextmanager
def running(log: Path, tls: TlsFiles | None = None, port: int | None = None) -> Iterator[SuperLink]:
    link = SuperLink(port or free_port(), log, tls)
    link.start()
    try:
        yield link
    finally:
        link.stop()
