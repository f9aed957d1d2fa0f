"""Boot an image under QEMU for testing, and always tear it down.

    with VirtualMachine(spec, workdir) as vm:
        vm.wait_for_ssh(key, user="root")
        ...

- q35 or pc; UEFI from the host's firmware descriptors with a per-run copy of
  the variables file, or SeaBIOS;
- the accelerator from the same probe the build uses;
- a throw-away qcow2 overlay: the image under test is never written;
- SSH forwarded from a free port on 127.0.0.1; serial console to a log file;
- QMP over a unix socket (qemu.qmp) to watch SHUTDOWN/RESET/GUEST_PANICKED
  and to quit; the process is killed if QMP quit does not end it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko
from qemu.qmp.legacy import QEMUMonitorProtocol

from .. import host_tools
from ..errors import BuildError
from ..progress import kill_group, say
from .accel import Accelerator
from .firmware import find_uefi
from .host_check import check_vfio_host

GUEST_MAC = "02:00:0a:00:02:0f"  # OpenNebula-style MAC for 10.0.2.15 (QEMU user net)
GUEST_NET = {
    "ETH0_MAC": GUEST_MAC,
    "ETH0_IP": "10.0.2.15",
    "ETH0_MASK": "255.255.255.0",
    "ETH0_GATEWAY": "10.0.2.2",
    "ETH0_DNS": "10.0.2.3",
}
WATCHED_EVENTS = ("SHUTDOWN", "RESET", "GUEST_PANICKED", "STOP")


@dataclass(frozen=True)
class VmSpec:
    image: Path
    firmware: str = "bios"  # "bios" (SeaBIOS) | "uefi" (OVMF)
    machine: str = "q35"
    memory: int = 2048
    cpus: int = 2
    accel: Accelerator = field(default_factory=lambda: Accelerator("tcg", "max", "default"))
    cdroms: tuple[Path, ...] = ()
    vfio: tuple[str, ...] = ()  # PCI addresses passed through with vfio-pci
    host_forwards: tuple[int, ...] = ()  # extra guest TCP ports forwarded from 127.0.0.1

    def effective(self) -> VmSpec:
        """VFIO passthrough forces what a passed-through GPU needs: UEFI, q35, -cpu host (KVM)."""
        if not self.vfio:
            return self
        return VmSpec(
            self.image,
            "uefi",
            "q35",
            self.memory,
            self.cpus,
            Accelerator("kvm", "host", "VFIO passthrough needs KVM"),
            self.cdroms,
            self.vfio,
            self.host_forwards,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_argv(
    spec: VmSpec,
    *,
    overlay: Path,
    ssh_port: int,
    serial_log: Path,
    qmp_socket: Path,
    uefi_vars: Path | None,
    uefi_code: Path | None,
    forwards: dict[int, int] | None = None,
) -> list[str]:
    """The QEMU command line for `spec` (pure: tests check it without running QEMU)."""
    spec = spec.effective()
    netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    for guest, host in (forwards or {}).items():
        netdev += f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
    argv = [
        "qemu-system-x86_64",
        "-name",
        "flower-test",
        "-machine",
        spec.machine,
        *spec.accel.qemu_args(),
        "-m",
        str(spec.memory),
        "-smp",
        str(spec.cpus),
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-serial",
        f"file:{serial_log}",
        "-qmp",
        f"unix:{qmp_socket},server=on,wait=off",
        "-drive",
        f"file={overlay},format=qcow2,if=virtio,discard=unmap",
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}",
        "-device",
        "virtio-rng-pci",
    ]
    if spec.firmware == "uefi":
        if uefi_code is None or uefi_vars is None:
            raise BuildError("UEFI boot needs the firmware code and a per-run variables file")
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={uefi_code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={uefi_vars}",
        ]
    for index, iso in enumerate(spec.cdroms):
        argv += ["-drive", f"file={iso},media=cdrom,readonly=on,if=ide,index={index}"]
    for address in spec.vfio:
        argv += ["-device", f"vfio-pci,host={address}"]
    return argv


class VirtualMachine:
    """A running test VM; leaving the `with` block always stops it."""

    def __init__(self, spec: VmSpec, workdir: Path, *, host_root: Path | None = None) -> None:
        self.spec = spec.effective()
        self.host_root = host_root  # where /proc, /sys, /etc are for the VFIO pre-check (tests)
        self.workdir = workdir
        self.serial_log = workdir / "serial.log"
        self.ssh_port = free_port()
        self.forwards = {guest: free_port() for guest in spec.host_forwards}
        self.events: list[dict[str, Any]] = []
        self.attempts = 0  # how many times QEMU was started (see restart())
        self.started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> VirtualMachine:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        host_tools.require("boot")
        if self.spec.vfio:
            report = check_vfio_host(self.spec.vfio, root=self.host_root)
            for line in report.lines("warning"):
                say(f"host check warning: {line}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        overlay = self.workdir / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(self.spec.image.resolve()),
                str(overlay),
            ],
            check=True,
            capture_output=True,
        )
        code = vars_copy = None
        if self.spec.firmware == "uefi":
            uefi = find_uefi()
            code, vars_copy = uefi.code, uefi.vars_copy(self.workdir / "OVMF_VARS.fd")
        qmp_socket = self.workdir / "qmp.sock"
        qmp_socket.unlink(missing_ok=True)
        argv = qemu_argv(
            self.spec,
            overlay=overlay,
            ssh_port=self.ssh_port,
            serial_log=self.serial_log,
            qmp_socket=qmp_socket,
            uefi_vars=vars_copy,
            uefi_code=code,
            forwards=self.forwards,
        )
        (self.workdir / "qemu-cmdline.txt").write_text(" ".join(argv) + "\n")
        say(
            f"starting VM ({self.spec.firmware}, {self.spec.machine}, {self.spec.accel.name}); "
            f"ssh 127.0.0.1:{self.ssh_port}; console {self.serial_log}"
        )
        self.started_at = time.monotonic()
        self.attempts += 1
        stderr = (self.workdir / "qemu-stderr.log").open("wb")
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while not qmp_socket.exists():
            if self._proc.poll() is not None:
                raise BuildError(f"QEMU exited at start: {(self.workdir / 'qemu-stderr.log').read_text()[-800:]}")
            if time.monotonic() > deadline:
                raise BuildError("QEMU did not open its QMP socket within 30 s")
            time.sleep(0.1)
        self._qmp = QEMUMonitorProtocol(str(qmp_socket))
        self._qmp.connect()

    def stop(self, grace: float = 20.0) -> None:
        """QMP quit, then kill after `grace` seconds. Safe to call twice."""
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._collect_events()
                self._qmp.cmd("quit")
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None
        if self._proc is not None:
            kill_group(self._proc, grace=grace)
            self._proc = None

    def restart(self) -> None:
        """Stop, then start again from a fresh overlay; the previous console is kept as
        serial-attempt-<n>.log beside serial.log."""
        self.stop()
        if self.serial_log.exists():
            self.serial_log.rename(self.workdir / f"serial-attempt-{self.attempts}.log")
        self.events.clear()
        self.start()

    # -- QMP -----------------------------------------------------------------------------
    def _collect_events(self) -> None:
        if self._qmp is None:
            return
        with contextlib.suppress(Exception):
            for event in self._qmp.get_events(wait=False):
                if event.get("event") in WATCHED_EVENTS:
                    self.events.append(event)
            self._qmp.clear_events()

    def event_names(self) -> list[str]:
        self._collect_events()
        return [str(e.get("event")) for e in self.events]

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def qmp(self, command: str, **args: Any) -> Any:
        if self._qmp is None:
            raise BuildError("QMP is not connected")
        return self._qmp.cmd(command, **args)

    # -- SSH -------------------------------------------------------------------------------
    def wait_for_ssh(
        self, key: paramiko.PKey, user: str = "root", timeout: float = 600, stall_timeout: float | None = None
    ) -> float:
        """Seconds from QEMU start until an SSH login with `key` succeeded.

        With `stall_timeout`, raise BootStalled once the serial console has printed nothing
        for that long while SSH is still down (a guest hung in early boot, seen under TCG)."""
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        console = ConsoleWatch(self.serial_log)
        while time.monotonic() < deadline:
            if stall_timeout is not None and console.silent_for() > stall_timeout:
                raise BootStalled(
                    f"the console printed nothing for {console.silent_for():.0f} s and SSH is not up "
                    f"(last line: {console.last_line()!r}); console {self.serial_log}"
                )
            if not self.running():
                raise BuildError(
                    f"the VM stopped before SSH came up (events {self.event_names()}); console {self.serial_log}"
                )
            if "GUEST_PANICKED" in self.event_names():
                raise BuildError(f"guest kernel panicked; console {self.serial_log}")
            try:
                with self.ssh(key, user, timeout=10) as client:
                    client.exec_command("true")[1].channel.recv_exit_status()
                return time.monotonic() - self.started_at
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(3)
        tail = self.serial_log.read_text(errors="replace").splitlines()[-10:] if self.serial_log.exists() else []
        raise BuildError(f"no SSH login within {timeout:.0f} s ({last_error}); console tail:\n  " + "\n  ".join(tail))

    @contextlib.contextmanager
    def ssh(
        self,
        key: paramiko.PKey,
        user: str = "root",
        timeout: float = 30,
        connect_attempts: int = 1,
    ) -> Iterator[paramiko.SSHClient]:
        """An SSH client logged in as `user`. A guest early in its first boot may drop connections
        (cloud-init restarts sshd after SSH first answers): with `connect_attempts` > 1 a failed
        connect is retried every 5 s. Only the connect: a command is never sent twice."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            for attempt in range(1, connect_attempts + 1):
                try:
                    client.connect(
                        "127.0.0.1",
                        port=self.ssh_port,
                        username=user,
                        pkey=key,
                        timeout=timeout,
                        banner_timeout=timeout,
                        auth_timeout=timeout,
                        allow_agent=False,
                        look_for_keys=False,
                    )
                    break
                except (paramiko.SSHException, OSError):
                    if attempt == connect_attempts:
                        raise
                    client.close()
                    time.sleep(5)
            yield client
        finally:
            client.close()

    def run(self, key: paramiko.PKey, command: str, user: str = "root", timeout: float = 300) -> tuple[int, str, str]:
        """Run `command` over SSH (connect retried for up to ~30 s); its exit code and output."""
        with self.ssh(key, user, connect_attempts=6) as client:
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            code = stdout.channel.recv_exit_status()
            return (
                code,
                stdout.read().decode(errors="replace"),
                stderr.read().decode(errors="replace"),
            )


class BootStalled(BuildError):
    """The guest stopped making progress before SSH came up."""


# A TCG guest has been seen to hang silently in early kernel boot (the kernel's console stopped
# at 1.0 s and printed nothing for 10 minutes); a normal boot, even under TCG beside other
# guests, never leaves the console silent this long before SSH is up.
STALL_TIMEOUT = 240.0


def boot_to_ssh(
    vm: VirtualMachine,
    key: paramiko.PKey,
    user: str = "root",
    timeout: float = 900,
    stall_timeout: float = STALL_TIMEOUT,
) -> float:
    """vm.wait_for_ssh, with a boot whose console goes silent for `stall_timeout` s before SSH
    is up started once more from a fresh overlay (vm.attempts says so; the stalled console is
    kept as serial-attempt-1.log). Seconds from the last start to the login."""
    try:
        return vm.wait_for_ssh(key, user=user, timeout=timeout, stall_timeout=stall_timeout)
    except BootStalled as exc:
        say(f"boot stalled: {exc}; starting the VM once more")
        vm.restart()
        return vm.wait_for_ssh(key, user=user, timeout=timeout, stall_timeout=stall_timeout)


class ConsoleWatch:
    """How long a serial console log has not grown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = -1
        self.changed_at = time.monotonic()

    def silent_for(self) -> float:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self.size:
            self.size, self.changed_at = size, time.monotonic()
        return time.monotonic() - self.changed_at

    def last_line(self) -> str:
        lines = self.path.read_text(errors="replace").splitlines() if self.path.exists() else []
        return lines[-1].strip() if lines else ""


def new_key(path: Path | None = None) -> paramiko.Ed25519Key:
    """A fresh key for one test VM (paramiko cannot generate ed25519: use ssh-keygen).

    With `path`, the private key is also kept there (for testinfra's identity file).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        key_file = path or Path(tmp) / "key"
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
        return paramiko.Ed25519Key.from_private_key_file(str(key_file))


def public_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()} flower-test"
