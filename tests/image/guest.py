"""The in-image tests' view of a booted appliance: a testinfra Host over the appliance's own
SSH connection, plus the few appliance-specific reads testinfra has no module for.

    with guest.connect(booted) as host:
        assert host.service("flower-supernode").is_running     # testinfra's own modules
        assert guest.status(host)["errors"] == []               # /run/flower/status.json
        args = guest.container_args(host)                       # docker inspect .Args

Why not testinfra's paramiko backend: it reads the invoking user's ~/.ssh/config (whatever
that says about 127.0.0.1), offers agent and default keys, and has no command timeout. The
backend here logs in exactly like the rest of the pipeline (the VM's one key, no agent, no
config: appliance_build.vm.launcher.VirtualMachine.ssh), keeps that connection for every
command, times each command out, and reconnects once when the guest dropped the connection
(a reboot) without ever sending a command twice.

testinfra ships no type information (no py.typed), so its Host and modules are `Any` to mypy;
the helpers below return plain, typed values.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import paramiko
import testinfra.backend.base
import testinfra.host
from testinfra.host import Host as Host  # re-exported: the type of the tests' `host` fixture

from appliance_build.vm.appliance import BootedAppliance

CONTAINER = "flower-supernode"
COMMAND_TIMEOUT = 300.0  # seconds; the slowest command the scenarios run (apt under TCG) takes ~2 min
OPEN_TIMEOUT = 30.0  # seconds for the guest's sshd to open a session (paramiko's default is an hour)


class Runner(Protocol):
    """Runs one shell command line on the guest: (exit status, stdout, stderr)."""

    def __call__(self, command: bytes, timeout: float) -> tuple[int, bytes, bytes]: ...


class CommandTimeout(AssertionError):
    """A command did not finish in time (an AssertionError, so pytest reports it as a failure)."""


class ConnectionLost(AssertionError):
    """The connection ended while a command ran: it has no exit status, and is not run again."""


class RunnerBackend(testinfra.backend.base.BaseBackend):  # type: ignore[misc]  # testinfra is untyped
    """A testinfra backend that hands every command line to a Runner."""

    NAME = "appliance"

    def __init__(self, name: str, runner: Runner, timeout: float = COMMAND_TIMEOUT) -> None:
        super().__init__(name)
        self.runner = runner
        self.timeout = timeout

    def run(self, command: str, *args: str, **kwargs: Any) -> testinfra.backend.base.CommandResult:
        line = self.encode(self.get_command(command, *args))
        rc, out, err = self.runner(line, self.timeout)
        return self.result(rc, line, out, err)


class SshSession:
    """One SSH connection, opened on first use by `connect` and kept; a Runner.

    When the connection is gone before a command could be started (the guest rebooted or
    restarted sshd), it is opened once more. A command that was started is never sent again:
    its failure is the test's failure."""

    def __init__(self, connect: Callable[[], AbstractContextManager[paramiko.SSHClient]]) -> None:
        self._connect = connect
        self._stack = contextlib.ExitStack()
        self._client: paramiko.SSHClient | None = None
        self.connections = 0  # how many times a connection was opened (for tests and diagnosis)

    def _open(self) -> paramiko.SSHClient:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._client = self._stack.enter_context(self._connect())
        self.connections += 1
        return self._client

    def _channel(self) -> paramiko.Channel:
        client = self._client or self._open()
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            client = self._open()
            transport = client.get_transport()
        assert transport is not None
        try:
            return transport.open_session(timeout=OPEN_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError):  # dropped since the last command
            transport = self._open().get_transport()
            assert transport is not None
            return transport.open_session(timeout=OPEN_TIMEOUT)

    def __call__(self, command: bytes, timeout: float) -> tuple[int, bytes, bytes]:
        channel = self._channel()
        with channel:
            channel.exec_command(command)
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            # read both streams as they come: reading stdout to its end first can block for
            # ever once the unread stderr has filled the channel's window
            while True:
                busy = False
                if channel.recv_ready():
                    out += channel.recv(65536)
                    busy = True
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    busy = True
                if not busy and channel.exit_status_ready():
                    break
                if time.monotonic() > deadline:
                    shown = command.decode(errors="replace")
                    raise CommandTimeout(f"no exit status after {timeout:.0f} s from: {shown}")
                if not busy:
                    time.sleep(0.01)
            # the exit status comes after the last data (RFC 4254, 6.10): drain what is buffered
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            status = channel.recv_exit_status()
            if status == -1:  # paramiko's value for a channel closed without an exit status
                shown = command.decode(errors="replace")
                raise ConnectionLost(f"the connection closed before {shown!r} exited (stdout: {bytes(out)[-500:]!r})")
            return status, bytes(out), bytes(err)

    def close(self) -> None:
        self._stack.close()
        self._client = None


def host_for(runner: Runner, name: str, timeout: float = COMMAND_TIMEOUT) -> Host:
    backend = RunnerBackend(name, runner, timeout)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


@contextlib.contextmanager
def connect(booted: BootedAppliance, timeout: float = COMMAND_TIMEOUT) -> Iterator[Host]:
    """A testinfra Host for `booted`, on one SSH connection that is closed when the block ends."""
    session = SshSession(lambda: booted.vm.ssh(booted.key, connect_attempts=6))
    try:
        yield host_for(session, f"root@127.0.0.1:{booted.vm.ssh_port}", timeout)
    finally:
        session.close()


# -- the appliance's own records -------------------------------------------------------------


def status(host: Host) -> dict[str, Any]:
    """/run/flower/status.json, the boot sequence's record (steps, errors, warnings, gpu)."""
    doc = json.loads(host.file("/run/flower/status.json").content_string)
    assert isinstance(doc, dict), doc
    return doc


def journal(host: Host, unit: str | None = None) -> str:
    """This boot's journal messages (of one unit), without metadata."""
    selector = f" -u {shlex.quote(unit)}" if unit else ""
    return str(host.check_output(f"journalctl -b{selector} --no-pager -o cat"))


def journal_values(host: Host, field: str) -> list[str]:
    """Every value a journal field has taken, over all boots (journalctl -F)."""
    return str(host.check_output("journalctl -F %s", field)).split()


# -- systemd ------------------------------------------------------------------------------------


def failed_units(host: Host) -> list[str]:
    """The units systemd reports as failed (empty on a clean system)."""
    lines = str(host.check_output("systemctl list-units --failed --no-legend --plain")).splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def system_state(host: Host) -> str:
    """`systemctl is-system-running --wait`: running, degraded, ... once start-up has finished."""
    return str(host.run("systemctl is-system-running --wait").stdout.strip())


def sshd_settings(host: Host) -> dict[str, list[str]]:
    """sshd's effective configuration (sshd -T): lower-case keyword -> its values, in order."""
    settings: dict[str, list[str]] = {}
    for line in str(host.check_output("sshd -T")).splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, []).append(value)
    return settings


# -- Docker ---------------------------------------------------------------------------------------


def inspect(host: Host, field: str, container: str = CONTAINER) -> Any:
    """One field of `docker inspect`, e.g. ".Args" or ".HostConfig.DeviceRequests", as JSON data."""
    if not re.fullmatch(r"(\.[A-Za-z]+)+", field):
        raise ValueError(f"not a docker inspect field path: {field!r}")
    return json.loads(host.check_output("docker inspect -f %s %s", f"{{{{json {field}}}}}", container))


def container_args(host: Host) -> list[str]:
    """The SuperNode container's arguments, as Docker passed them to its entrypoint."""
    args = inspect(host, ".Args")
    assert isinstance(args, list), args
    return [str(a) for a in args]


def container_env(host: Host) -> list[str]:
    """The SuperNode container's environment, NAME=value each."""
    env = inspect(host, ".Config.Env")
    assert isinstance(env, list), env
    return [str(e) for e in env]


def running_containers(host: Host, name: str = CONTAINER) -> list[str]:
    """IDs of running containers whose name matches `name` (docker ps --filter name=)."""
    return str(host.check_output("docker ps -q --filter name=%s", name)).split()


def container_logs(host: Host, container: str = CONTAINER) -> str:
    """The container's output, stdout and stderr together."""
    return str(host.check_output("docker logs %s 2>&1", container))


def docker_info(host: Host, field: str) -> Any:
    """One field of `docker info`, e.g. ".Runtimes", as JSON data."""
    if not re.fullmatch(r"(\.[A-Za-z]+)+", field):
        raise ValueError(f"not a docker info field path: {field!r}")
    return json.loads(host.check_output("docker info --format %s", f"{{{{json {field}}}}}"))


# -- files testinfra's file module cannot name ------------------------------------------------------

_GLOB = re.compile(r"[A-Za-z0-9/_.*-]+")


def glob(host: Host, *patterns: str) -> list[str]:
    """The paths on the guest that match the shell glob patterns (none: an empty list)."""
    for pattern in patterns:
        if not _GLOB.fullmatch(pattern):
            raise ValueError(f"glob pattern {pattern!r}: only letters, digits, '/_.-' and '*'")
    script = f'for f in {" ".join(patterns)}; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\\n" "$f"; done; true'
    return str(host.check_output(script)).splitlines()


def grep_recursive(host: Host, pattern: str, *directories: str) -> list[str]:
    """Lines under `directories` that contain the fixed string `pattern` ("file:line").

    A directory that cannot be read is a failure, not "no match"."""
    result = host.run("grep -r -F -e %s -- " + " ".join(["%s"] * len(directories)), pattern, *directories)
    assert result.rc in (0, 1), f"grep failed (exit {result.rc}): {result.stderr}"
    return str(result.stdout).splitlines()
