"""The ``flwr-clientapp`` that comes first on the SuperNode container's PATH.

flwr's SubprocessExecutor (``flwr/supercore/superexec/executor/subprocess_executor.py``) starts,
for every ClientApp task, ``flwr-clientapp --runtime-api-address A --token T [--insecure |
--root-certificates P] [--parent-pid N] [--allow-runtime-dependency-installation]`` by name. That
process must pull its task within ``HEARTBEAT_DEFAULT_INTERVAL`` (30 s, ``flwr/common/constant.py``)
of the claim, which a slow host cannot do while it imports flwr from scratch.

This shim hands the command line, its stdin/stdout/stderr (as file descriptors, SCM_RIGHTS), its
environment and working directory to the warm launcher (:mod:`supernode_container.warm_clientapp`)
over a Unix socket; the launcher forks a child that already has flwr imported and runs flwr's own
``flwr_clientapp()`` there. The shim then waits, forwards SIGTERM/SIGINT (and SIGHUP, SIGQUIT,
SIGUSR1, SIGUSR2) to that child and exits with its status, so flower-superexec sees what it would
see from a stock ``flwr-clientapp``.

When no launcher answers within ``FL_WARM_CLIENTAPP_TIMEOUT`` seconds (default 2: connect, send,
and the launcher's OFFER), or the command line is not the executor's form above, the shim
``exec``s the real ``flwr-clientapp`` instead: a broken launcher slows a node down, never stops it.

Protocol (one connection per task, stream socket):

1. shim -> launcher: 4-byte big-endian length, then a JSON request (argv, env, cwd, pgid, start
   time).
2. launcher -> shim: ``OFFER`` (it will fork on request) or ``FAIL <reason>``.
3. shim -> launcher: ``GO``, carrying fds 0, 1, 2 (SCM_RIGHTS). Before this the shim may still
   fall back; after it, it may not. The descriptors travel only now, so a launcher that hangs
   before its OFFER never holds the task's stdout open.
4. child -> shim: ``ACK <pid>`` once it runs (so a launcher that dies right after forking does not
   lose the task); then ``EXIT <status>`` from the child when ``flwr_clientapp()`` returns, and/or
   from the launcher when it reaps the child (status < 0: killed by that signal).
   EOF or EXIT before ACK means no ClientApp code ran: the shim falls back.

Standard library only, no site-packages needed (the container runs it as ``python -I -S``); the
launcher imports its protocol constants from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

PROGRAM = "flwr-clientapp"
PROTOCOL = 1
ENV_SOCKET = "FL_WARM_CLIENTAPP_SOCKET"  # the launcher's socket (set by the entrypoint)
ENV_REAL = "FL_WARM_CLIENTAPP_REAL"  # the real flwr-clientapp (else: the next one on PATH)
ENV_LOG = "FL_WARM_CLIENTAPP_LOG"  # JSON lines, one per launch event (optional)
ENV_TIMEOUT = "FL_WARM_CLIENTAPP_TIMEOUT"  # seconds for connect + OFFER before falling back
DEFAULT_TIMEOUT = 2.0
MAX_REQUEST = 4 << 20
HEADER = struct.Struct(">I")
OFFER, GO, FAIL, ACK, EXIT = b"OFFER", b"GO", b"FAIL", b"ACK", b"EXIT"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# SubprocessExecutor.launch's options: flag -> (key, takes a value)
_OPTIONS = {
    "--runtime-api-address": ("runtime_api_address", True),
    "--token": ("token", True),
    "--insecure": ("insecure", False),
    "--root-certificates": ("root_certificates", True),
    "--parent-pid": ("parent_pid", True),
    "--allow-runtime-dependency-installation": ("runtime_dependency_install", False),
}


class NoLauncher(Exception):
    """The launcher is absent, not ready, too slow or refused the task: fall back."""


def parse_executor_argv(args: list[str]) -> dict[str, Any] | None:
    """The options of a SubprocessExecutor command line (without argv[0]), or None for any other form.

    Only this form is handed over; anything else (``--help``, ``--token-file``, an option a newer
    flwr adds) goes to the real program, whose own parser then decides.
    """
    out: dict[str, Any] = {}
    index = 0
    while index < len(args):
        option = _OPTIONS.get(args[index])
        if option is None or option[0] in out:
            return None
        key, has_value = option
        if has_value:
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                return None
            out[key] = args[index + 1]
            index += 2
        else:
            out[key] = True
            index += 1
    if "runtime_api_address" not in out or "token" not in out:
        return None
    if out.get("insecure") and "root_certificates" in out:
        return None
    if "parent_pid" in out and not out["parent_pid"].isdigit():
        return None
    return out


def task_id(args: list[str]) -> str:
    """A short digest of the task's token (never the token itself) for the launch log."""
    parsed = parse_executor_argv(args) or {}
    token = str(parsed.get("token", ""))
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


def task_fields(args: list[str]) -> dict[str, Any]:
    """What the launch log records of a task: its token digest and the SuperExec's pid (one per node)."""
    parsed = parse_executor_argv(args) or {}
    parent = parsed.get("parent_pid")
    return {"task": task_id(args), "parent_pid": int(parent) if parent else None}


def process_start_time(pid: int | str = "self") -> float | None:
    """When process `pid` was started (exec'd), as a Unix time, from /proc (10 ms resolution).

    ``starttime`` in /proc/PID/stat counts clock ticks since boot (CLOCK_BOOTTIME).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, IndexError, ValueError):
        return None


def log_event(event: str, **fields: Any) -> None:
    """Append one JSON line to $FL_WARM_CLIENTAPP_LOG (one write of a short line: O_APPEND keeps it whole)."""
    path = os.environ.get(ENV_LOG)
    if not path:
        return
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields}) + "\n"
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def encode_request(doc: dict[str, Any]) -> bytes:
    payload = json.dumps(doc).encode()
    return HEADER.pack(len(payload)) + payload


class LineReader:
    """Lines from a stream socket, each read bounded by an absolute deadline (None: no bound)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self, deadline: float | None) -> bytes | None:
        """The next line without its newline; None on EOF; socket.timeout past the deadline."""
        while b"\n" not in self.buffer:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no answer in time")
                self.sock.settimeout(remaining)
            else:
                self.sock.settimeout(None)
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def hand_over(path: str, args: list[str], timeout: float, started: float | None) -> tuple[socket.socket, LineReader]:
    """Connect, send the task, get OFFER, commit with GO and the stdio fds; NoLauncher if a step fails in time."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        request = encode_request(
            {
                "protocol": PROTOCOL,
                "argv": [PROGRAM, *args],
                "env": dict(os.environ),
                "cwd": os.getcwd(),
                "pgid": os.getpgid(0),
                "shim_pid": os.getpid(),
                "started": started,
            }
        )
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(request)
        reader = LineReader(sock)
        answer = reader.line(deadline)
        if answer != OFFER:
            raise NoLauncher(f"launcher answered {answer!r}")
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        if socket.send_fds(sock, [GO + b"\n"], [0, 1, 2]) != len(GO) + 1:
            raise NoLauncher("GO not sent whole")
    except NoLauncher:
        sock.close()
        raise
    except OSError as exc:  # includes TimeoutError, ConnectionRefusedError, FileNotFoundError
        sock.close()
        raise NoLauncher(f"{type(exc).__name__}: {exc}") from None
    return sock, reader


def _field(line: bytes, word: bytes) -> int | None:
    parts = line.split()
    if len(parts) == 2 and parts[0] == word and parts[1].lstrip(b"-").isdigit():
        return int(parts[1])
    return None


class Forwarder:
    """Signal handlers that pass SIGTERM, SIGINT, ... on to the task's child (by pidfd when possible)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.pending: list[int] = []
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self._handle)

    def attach(self, pid: int) -> None:
        self.pid = pid
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(pid)
        for signum in self.pending:
            self._send(signum)
        self.pending.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.pid is None:
            self.pending.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        with contextlib.suppress(OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            elif self.pid is not None:
                os.kill(self.pid, signum)


def wait_for_child(reader: LineReader, forwarder: Forwarder) -> int | None:
    """The child's status (< 0: killed by that signal); None when no child ran (fall back).

    Blocks without a bound after the ACK: a ClientApp runs as long as its task does.
    """
    acked = False
    while True:
        try:
            line = reader.line(None if acked else time.monotonic() + 60)
        except OSError:
            line = None
        if line is None:
            if not acked:
                return None
            # the child and the launcher are both gone without a status (e.g. the child was
            # killed while the launcher was down): report a failure, as a killed process would
            print("flwr-clientapp shim: the warm ClientApp ended without an exit status", file=sys.stderr)
            return 1
        pid = _field(line, ACK)
        if pid is not None and not acked:
            acked = True
            forwarder.attach(pid)
            log_event("shim-child", child=pid)
            continue
        status = _field(line, EXIT)
        if status is not None:
            return status if acked else None


def real_program() -> str | None:
    """$FL_WARM_CLIENTAPP_REAL, else the next flwr-clientapp on PATH that is not this shim."""
    explicit = os.environ.get(ENV_REAL)
    if explicit:
        return explicit
    me = os.path.realpath(sys.argv[0])
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", PROGRAM)
        if os.access(candidate, os.X_OK) and os.path.realpath(candidate) != me:
            return candidate
    return None


def exit_like(status: int) -> int:
    """Exit with `status` as the child did: re-raise its signal, else return its code."""
    if status < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def fall_back(args: list[str], reason: str, forwarder: Forwarder | None = None) -> int:
    """Replace this process with the real flwr-clientapp (same argv, stdio, environment).

    A signal that arrived during the hand-over ends the task instead, as it would have ended a
    stock flwr-clientapp that was still starting.
    """
    if forwarder is not None and forwarder.pending:
        log_event("shim", mode="signalled", reason=reason, signal=forwarder.pending[0], **task_fields(args))
        return exit_like(-forwarder.pending[0])
    real = real_program()
    log_event("shim", mode="fallback", reason=reason, **task_fields(args))
    if real is None:
        print(f"flwr-clientapp shim: no real {PROGRAM} found on PATH ({reason})", file=sys.stderr)
        return 127
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.execv(real, [real, *args])
    return 127  # not reached


def main() -> int:
    started = process_start_time()
    args = sys.argv[1:]
    path = os.environ.get(ENV_SOCKET, "")
    if parse_executor_argv(args) is None:
        return fall_back(args, "command line is not the SubprocessExecutor form")
    if not path:
        return fall_back(args, f"{ENV_SOCKET} is not set")
    try:
        timeout = float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    forwarder = Forwarder()  # before GO, so a SIGTERM during the hand-over is not lost
    try:
        sock, reader = hand_over(path, args, timeout, started)
    except NoLauncher as exc:
        return fall_back(args, str(exc), forwarder)
    log_event("shim", mode="warm", started=started, **task_fields(args))
    status = wait_for_child(reader, forwarder)
    sock.close()
    if status is None:
        return fall_back(args, "the launcher accepted the task but no child started", forwarder)
    log_event("shim-exit", status=status, **task_fields(args))
    return exit_like(status)


if __name__ == "__main__":
    sys.exit(main())
