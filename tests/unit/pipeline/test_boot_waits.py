"""Waiting for a booting guest: a silent console means a stalled boot (restarted once); SSH connects retried."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance_build.vm import appliance
from appliance_build.vm.accel import Accelerator
from appliance_build.vm.launcher import BootStalled, ConsoleWatch, VirtualMachine, VmSpec, new_key

HUNG_CONSOLE = "[    1.006055] IP idents hash table entries: 32768 (order: 6, 262144 bytes, linear)\n"


def test_console_watch_resets_when_the_log_grows(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    watch = ConsoleWatch(log)
    assert watch.silent_for() < 1 and watch.last_line() == ""
    log.write_text(HUNG_CONSOLE)
    watch.changed_at -= 100  # pretend time passed since the last look
    assert watch.silent_for() < 1, "growth since the last look restarts the clock"
    watch.changed_at -= 100
    assert watch.silent_for() >= 100
    assert watch.last_line().startswith("[    1.006055] IP idents")


def test_wait_for_ssh_reports_a_silent_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = VirtualMachine(VmSpec(Path("img.qcow2"), firmware="bios", accel=Accelerator("tcg", "max", "t")), tmp_path)
    vm.serial_log.write_text(HUNG_CONSOLE)
    monkeypatch.setattr(vm, "running", lambda: True)

    @contextlib.contextmanager
    def refused(*args: Any, **kwargs: Any) -> Iterator[None]:
        raise ConnectionRefusedError("port 22 closed")
        yield  # pragma: no cover

    monkeypatch.setattr(vm, "ssh", refused)
    with pytest.raises(BootStalled, match=r"printed nothing for \d+ s .*IP idents hash table"):
        vm.wait_for_ssh(new_key(), timeout=60, stall_timeout=1)


class FakeVm:
    """Stalls `stalls` times, then comes up on SSH after 42 s."""

    def __init__(self, stalls: int) -> None:
        self.stalls = stalls
        self.restarts = 0

    def wait_for_ssh(self, key: Any, user: str, timeout: float, stall_timeout: float) -> float:
        if self.stalls:
            self.stalls -= 1
            raise BootStalled("silent console")
        return 42.0

    def restart(self) -> None:
        self.restarts += 1


def started(vm: FakeVm, tmp_path: Path) -> appliance.StartedAppliance:
    return appliance.StartedAppliance(vm, key=None, key_file=tmp_path / "k", workdir=tmp_path)  # type: ignore[arg-type]


def test_a_stalled_boot_is_restarted_once(tmp_path: Path) -> None:
    vm = FakeVm(stalls=1)
    booted = started(vm, tmp_path).wait_for_ssh(timeout=900)
    assert vm.restarts == 1 and booted.ssh_seconds == 42.0


def test_a_second_stall_is_an_error(tmp_path: Path) -> None:
    vm = FakeVm(stalls=2)
    with pytest.raises(BootStalled):
        started(vm, tmp_path).wait_for_ssh(timeout=900)
    assert vm.restarts == 1


class FlakyClient:
    """An SSHClient whose first `failures` connects are reset, as while cloud-init restarts sshd."""

    failures = 0
    connects = 0

    def set_missing_host_key_policy(self, policy: Any) -> None:
        pass

    def connect(self, *args: Any, **kwargs: Any) -> None:
        FlakyClient.connects += 1
        if FlakyClient.connects <= FlakyClient.failures:
            raise ConnectionResetError("Connection reset by peer")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("failures", "attempts", "connected"), [(2, 3, True), (3, 3, False), (1, 1, False)])
def test_ssh_connect_is_retried_only_as_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int, attempts: int, connected: bool
) -> None:
    import appliance_build.vm.launcher as launcher

    monkeypatch.setattr(launcher.paramiko, "SSHClient", FlakyClient)
    monkeypatch.setattr(launcher.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(FlakyClient, "failures", failures)
    monkeypatch.setattr(FlakyClient, "connects", 0)
    vm = VirtualMachine(VmSpec(Path("img.qcow2"), firmware="bios", accel=Accelerator("tcg", "max", "t")), tmp_path)
    if connected:
        with vm.ssh(new_key(), connect_attempts=attempts) as client:
            assert isinstance(client, FlakyClient)
    else:
        with pytest.raises(ConnectionResetError), vm.ssh(new_key(), connect_attempts=attempts):
            pass
    assert FlakyClient.connects == min(failures + 1, attempts)
