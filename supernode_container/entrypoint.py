"""The SuperNode container's entrypoint: ``flower-supernode`` plus the warm ClientApp launcher.

``python -m supernode_container.entrypoint [flower-supernode options...]``

- Turns flwr's telemetry and update check off unless the environment says otherwise
  (``FLWR_TELEMETRY_ENABLED=0``: ``flwr/supercore/telemetry.py``; ``FLWR_DISABLE_UPDATE_CHECK=1``:
  ``flwr/supercore/constant.py``, read in ``flwr/supercore/update_check.py``).
- With ``FL_WARM_CLIENTAPP=NO`` it ``exec``s ``flower-supernode`` with the options: stock flwr.
- Otherwise (default ``YES``) it makes a private directory (``FL_WARM_CLIENTAPP_DIR``, default a
  new ``/tmp/flwr-warm-clientapp-*``, mode 0700) with the launcher's socket, the launch log and
  ``bin/flwr-clientapp`` (a two-line bootstrap of :mod:`supernode_container.flwr_clientapp_shim`
  run as ``python -I -S``), puts that ``bin`` first on ``flower-supernode``'s PATH, and then
  supervises two children:

  * the launcher (:mod:`supernode_container.warm_clientapp`): restarted whenever it exits, after
    1 s, doubling up to 30 s while it keeps dying within a minute of its start (an import that
    fails every time costs one attempt per 30 s, and the shims fall back meanwhile);
  * ``flower-supernode``: SIGTERM, SIGINT and SIGHUP are passed on to it; when it exits the
    launcher is stopped (by its pid) and the entrypoint exits with the SuperNode's status.

  It also becomes a child subreaper, so task children orphaned by a launcher that died are
  reaped here (and by tini when this runs as its child).

Why here and not started on demand by the shim: one supervisor makes one launcher per container
with no lock or start race between concurrent shims, restarts it with a back-off, and sends its
output to the container's log; the shim stays a stdlib-only client whose only failure mode is
falling back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from supernode_container import flwr_clientapp_shim as shim

ENV_ENABLED = "FL_WARM_CLIENTAPP"
ENV_DIR = "FL_WARM_CLIENTAPP_DIR"
ENV_SUPERNODE = "FL_SUPERNODE_EXE"  # tests point this elsewhere; default: beside this interpreter
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
STOP_GRACE_S = 5.0
PR_SET_CHILD_SUBREAPER = 36


def enabled(env: Mapping[str, str]) -> bool:
    """FL_WARM_CLIENTAPP: YES (default) or NO; anything else counts as YES (the runtime validates it)."""
    return env.get(ENV_ENABLED, "YES").strip().upper() not in ("NO", "0", "FALSE", "OFF")


def venv_program(name: str) -> str:
    """A console script of this interpreter's environment (/opt/flwr/bin/NAME in the container)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def shim_script(python: str) -> str:
    """The generated ``flwr-clientapp``: this interpreter with -I -S, importing the shim's compiled module."""
    package_root = Path(shim.__file__).resolve().parent.parent
    return (
        f"#!{python} -IS\n"
        "import sys\n"
        f"sys.path.append({str(package_root)!r})\n"
        "from supernode_container.flwr_clientapp_shim import main\n"
        "sys.exit(main())\n"
    )


def prepare(env: dict[str, str]) -> Path:
    """Make the private directory with the shim, and point `env` (flower-supernode's) at it."""
    configured = env.get(ENV_DIR)
    if configured:
        root = Path(configured)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="flwr-warm-clientapp-"))
    (root / "bin").mkdir(exist_ok=True)
    script = root / "bin" / shim.PROGRAM
    script.write_text(shim_script(sys.executable))
    script.chmod(0o755)
    env.setdefault(shim.ENV_REAL, venv_program(shim.PROGRAM))
    env[shim.ENV_SOCKET] = str(root / "server.sock")
    env.setdefault(shim.ENV_LOG, str(root / "launches.jsonl"))
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", os.defpath)])
    return root


def become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Supervisor:
    def __init__(self, supernode_argv: list[str], env: dict[str, str], socket_path: Path) -> None:
        self.supernode_argv = supernode_argv
        self.env = env
        self.socket_path = socket_path
        self.supernode: int | None = None
        self.launcher: int | None = None
        self.launcher_started = 0.0
        self.backoff = RESTART_FIRST_S
        self.restart_at: float | None = None
        self.restarts = 0
        self.pending: list[int] = []

    def launcher_argv(self) -> list[str]:
        return [sys.executable, "-m", "supernode_container.warm_clientapp", "--socket", str(self.socket_path)]

    def start_launcher(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "PATH"}
        env["PATH"] = self.env["PATH"].split(os.pathsep, 1)[-1]  # the launcher itself needs no shim
        self.launcher = os.posix_spawn(self.launcher_argv()[0], self.launcher_argv(), env)
        self.launcher_started = time.monotonic()

    def launcher_exited(self, code: int) -> None:
        ran = time.monotonic() - self.launcher_started
        self.backoff = RESTART_FIRST_S if ran > HEALTHY_AFTER_S else min(self.backoff * 2, RESTART_MAX_S)
        delay = RESTART_FIRST_S if ran > HEALTHY_AFTER_S else self.backoff
        print(
            f"entrypoint: warm ClientApp launcher exited ({code}) after {ran:.0f} s; restarting in {delay:.0f} s "
            "(ClientApps start the stock way meanwhile)",
            file=sys.stderr,
            flush=True,
        )
        self.launcher = None
        self.restart_at = time.monotonic() + delay
        self.restarts += 1

    def run(self) -> int:
        become_subreaper()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda signum, _: self.pending.append(signum))
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        self.start_launcher()
        self.supernode = os.posix_spawn(self.supernode_argv[0], self.supernode_argv, self.env)
        try:
            while True:
                timeout = 1.0 if self.restart_at is None else max(0.0, min(1.0, self.restart_at - time.monotonic()))
                if selector.select(timeout):
                    with contextlib.suppress(BlockingIOError):
                        while wake_r.recv(4096):
                            pass
                while self.pending:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.supernode, self.pending.pop(0))
                status = self.reap()
                if status is not None:
                    return status
                if self.restart_at is not None and time.monotonic() >= self.restart_at:
                    self.restart_at = None
                    self.start_launcher()
        finally:
            self.stop_launcher()
            selector.close()
            wake_r.close()
            wake_w.close()

    def reap(self) -> int | None:
        """Reap every exited child; the SuperNode's exit code once it has exited."""
        result: int | None = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return result
            if pid == 0:
                return result
            code = os.waitstatus_to_exitcode(status)
            if pid == self.supernode:
                self.supernode = None
                result = code if code >= 0 else 128 - code
            elif pid == self.launcher:
                self.launcher_exited(code)

    def stop_launcher(self) -> None:
        pid, self.launcher = self.launcher, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] != 0:
                    return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    options = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    supernode = env.get(ENV_SUPERNODE) or venv_program("flower-supernode")
    supernode_argv = [supernode, *options]
    if not enabled(env):
        os.execve(supernode, supernode_argv, env)
    try:
        root = prepare(env)
    except OSError as exc:
        print(
            f"entrypoint: warm ClientApp launcher disabled ({exc}); starting flower-supernode the stock way",
            file=sys.stderr,
            flush=True,
        )
        os.execve(supernode, supernode_argv, env)
    try:
        return Supervisor(supernode_argv, env, Path(env[shim.ENV_SOCKET])).run()
    finally:
        if not env.get(ENV_DIR):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
