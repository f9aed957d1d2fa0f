"""tests/image/guest.py without a VM: its testinfra backend must give testinfra's modules the
same answers as testinfra's own local backend on this host, its SSH session must behave on a
real SSH connection (an in-process paramiko server that runs the commands on this host), and
its helpers must read real command output right."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
import testinfra.backend.local
import testinfra.host

from tests.image import guest


def run_here(command: bytes, timeout: float) -> tuple[int, bytes, bytes]:
    """A Runner on this host: the command line through sh, as sshd would run it."""
    proc = subprocess.run(["sh", "-c", command], capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def ours() -> Any:
    return guest.host_for(run_here, "this-host")


@pytest.fixture
def local() -> Any:
    backend = testinfra.backend.local.LocalBackend()
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


# -- the backend: testinfra's modules, the same answers as the local backend ---------------------


def test_file_module_answers_like_the_local_backend(ours: Any, local: Any, tmp_path: Path) -> None:
    target = tmp_path / "a file with spaces; and $(shell)"
    target.write_text("first line\nsecond: café\n")
    target.chmod(0o640)
    for host in (ours, local):
        file = host.file(str(target))
        assert file.exists and file.is_file and not file.is_directory
        assert file.mode == 0o640
        assert file.contains("^second:") and not file.contains("^third")
        assert file.content_string == "first line\nsecond: café\n"
        assert not host.file(str(tmp_path / "missing")).exists
        assert host.file(str(tmp_path)).listdir() == [target.name]
    assert ours.file("/etc/passwd").user == local.file("/etc/passwd").user == "root"


def test_user_and_package_modules_answer_like_the_local_backend(ours: Any, local: Any) -> None:
    assert ours.user("root").exists and ours.user("root").uid == local.user("root").uid == 0
    assert ours.user("root").home == local.user("root").home
    assert not ours.user("no-such-user-here").exists
    dpkg = ours.package("dpkg")
    assert dpkg.is_installed and dpkg.version == local.package("dpkg").version
    assert not ours.package("no-such-package-here").is_installed


def test_run_quotes_arguments_and_keeps_streams_apart(ours: Any) -> None:
    result = ours.run("printf '%%s|' %s; echo oops >&2; exit 3", "a b; echo injected")
    assert result.rc == 3
    assert result.stdout == "a b; echo injected|"
    assert result.stderr == "oops\n"
    assert ours.check_output("echo %s", "ok") == "ok"
    with pytest.raises(AssertionError, match="Unexpected exit code 1"):
        ours.check_output("false")


# -- the appliance helpers, on real output ----------------------------------------------------------


def test_glob_lists_only_what_exists(ours: Any, tmp_path: Path) -> None:
    (tmp_path / "pwned-a").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pwned-b").touch()
    found = guest.glob(ours, f"{tmp_path}/pwned*", f"{tmp_path}/sub/pwned*", f"{tmp_path}/none*")
    assert found == [f"{tmp_path}/pwned-a", f"{tmp_path}/sub/pwned-b"]
    assert guest.glob(ours, f"{tmp_path}/nothing-*") == []
    with pytest.raises(ValueError, match="only letters"):
        guest.glob(ours, "/tmp/x; touch /tmp/y")


def test_grep_recursive_tells_no_match_from_an_error(ours: Any, tmp_path: Path) -> None:
    (tmp_path / "cloud").mkdir()
    (tmp_path / "cloud" / "cfg").write_text("hostname: flbuild-1\nother\n")
    assert guest.grep_recursive(ours, "flbuild", str(tmp_path / "cloud")) == [
        f"{tmp_path}/cloud/cfg:hostname: flbuild-1"
    ]
    assert guest.grep_recursive(ours, "fl.uild", str(tmp_path / "cloud")) == [], "a fixed string, not a regex"
    with pytest.raises(AssertionError, match="grep failed"):
        guest.grep_recursive(ours, "flbuild", str(tmp_path / "missing"))


def test_docker_field_paths_are_checked_before_they_reach_a_shell(ours: Any) -> None:
    for bad in (".Args}}' x; reboot; '", "Args", ".Config.Env .Args"):
        with pytest.raises(ValueError, match="field path"):
            guest.inspect(ours, bad)
        with pytest.raises(ValueError, match="field path"):
            guest.docker_info(ours, bad)


# -- the SSH session, on a real SSH connection -----------------------------------------------------


class _Sshd(paramiko.ServerInterface):  # type: ignore[misc]  # paramiko ships no type information
    """Accepts one client key and runs each exec request with sh on this host."""

    def __init__(self, key: paramiko.PKey, executed: list[bytes]) -> None:
        self.key = key
        self.executed = executed

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "root" and key == self.key
        return int(paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.executed.append(command)
        threading.Thread(target=self._run, args=(channel, command), daemon=True).start()
        return True

    @staticmethod
    def _run(channel: paramiko.Channel, command: bytes) -> None:
        proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None

        def pump_stderr() -> None:
            while chunk := stderr.read(8192):
                channel.sendall_stderr(chunk)

        err_pump = threading.Thread(target=pump_stderr)
        err_pump.start()
        while chunk := stdout.read(8192):
            channel.sendall(chunk)
        err_pump.join()
        channel.send_exit_status(proc.wait())
        channel.close()


class SshServer:
    def __init__(self) -> None:
        self.host_key = paramiko.RSAKey.generate(2048)
        self.client_key = paramiko.RSAKey.generate(2048)
        self.executed: list[bytes] = []
        self.transports: list[paramiko.Transport] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            transport.start_server(server=_Sshd(self.client_key, self.executed))
            self.transports.append(transport)

    def drop_connections(self) -> None:
        for transport in self.transports:
            transport.close()

    @contextlib.contextmanager
    def connect(self) -> Iterator[paramiko.SSHClient]:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=self.port,
            username="root",
            pkey=self.client_key,
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
        try:
            yield client
        finally:
            client.close()

    def close(self) -> None:
        self.drop_connections()
        self.listener.close()


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshServer]:
    server = SshServer()
    yield server
    server.close()


def test_session_runs_commands_on_one_connection(sshd: SshServer) -> None:
    session = guest.SshSession(sshd.connect)
    host = guest.host_for(session, "ssh-test")
    try:
        assert host.check_output("echo %s", "über") == "über"
        assert host.file("/etc/passwd").exists
        result = host.run("echo out; echo err >&2; exit 7")
        assert (result.rc, result.stdout, result.stderr) == (7, "out\n", "err\n")
        assert session.connections == 1
    finally:
        session.close()


def test_session_reads_both_streams_without_blocking(sshd: SshServer) -> None:
    """4 MiB on stderr before anything on stdout: more than the channel's window holds."""
    session = guest.SshSession(sshd.connect)
    try:
        rc, out, err = session(b"head -c 4194304 /dev/zero >&2; echo done", 60)
        assert (rc, out, len(err)) == (0, b"done\n", 4194304)
    finally:
        session.close()


def test_session_times_a_hung_command_out(sshd: SshServer) -> None:
    session = guest.SshSession(sshd.connect)
    try:
        with pytest.raises(guest.CommandTimeout, match="no exit status after 1 s from: sleep 30"):
            session(b"sleep 30", 1)
    finally:
        session.close()


def test_session_reconnects_after_the_guest_dropped_it_and_never_resends(sshd: SshServer, tmp_path: Path) -> None:
    session = guest.SshSession(sshd.connect)
    marker = tmp_path / "runs"
    try:
        assert session(b"true", 10)[0] == 0
        sshd.drop_connections()  # what a reboot does to the open connection
        rc, out, _ = session(f"echo x >> {marker}; cat {marker}".encode(), 10)
        assert (rc, out) == (0, b"x\n"), "the command ran once, on a new connection"
        assert session.connections == 2
        # a connection dropped while a command runs is that command's failure, not a retry
        before = len(sshd.executed)
        threading.Timer(1.0, sshd.drop_connections).start()
        with pytest.raises(guest.ConnectionLost, match="the connection closed before"):
            session(f"echo y >> {marker}; sleep 5".encode(), 3)
        assert len(sshd.executed) == before + 1
        assert marker.read_text() == "x\ny\n"
    finally:
        session.close()
