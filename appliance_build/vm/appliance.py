"""Boot a built appliance image the way OpenNebula does: a CONTEXT CD with context.sh.

Used by the in-image tests and the end-to-end run. The context carries the
scenario's FL_* variables, the test's SSH public key and an OpenNebula-style
static network for QEMU user networking (10.0.2.15/24, gateway 10.0.2.2).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ..errors import BuildError
from . import accel as accel_probe
from .isos import context_iso
from .launcher import GUEST_NET, STALL_TIMEOUT, VirtualMachine, VmSpec, boot_to_ssh, new_key, public_line

READY_CHECK = "docker inspect -f '{{.State.Running}}' flower-supernode 2>/dev/null"


@dataclass
class BootedAppliance:
    vm: VirtualMachine
    key: paramiko.PKey
    key_file: Path
    ssh_seconds: float
    workdir: Path

    def run(self, command: str, timeout: float = 300) -> tuple[int, str, str]:
        return self.vm.run(self.key, command, timeout=timeout)

    def put(self, files: list[Path], remote_dir: str) -> None:
        """Copy local files into `remote_dir` on the guest (created if missing) over SFTP."""
        code, _, err = self.run(f"install -d -m 0755 {shlex.quote(remote_dir)}")
        if code != 0:
            raise BuildError(f"cannot create {remote_dir} on the guest: {err.strip()}")
        with self.vm.ssh(self.key) as client, client.open_sftp() as sftp:
            for path in files:
                sftp.put(str(path), f"{remote_dir.rstrip('/')}/{path.name}")

    def wait_until_ready(self, timeout: float = 900) -> float | None:
        """Seconds from QEMU start until the SuperNode container runs (None: never)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                code, out, _ = self.run(READY_CHECK, timeout=60)
                if code == 0 and out.strip() == "true":
                    return time.monotonic() - self.vm.started_at
            time.sleep(5)
        return None

    def reboot(self, timeout: float = 900) -> float:
        """Reboot the guest; return once it is back on SSH with a new boot id (seconds taken)."""
        _, old, _ = self.run("cat /proc/sys/kernel/random/boot_id")
        started = time.monotonic()
        with contextlib.suppress(Exception):  # the connection may drop as the guest goes down
            self.run("systemctl reboot", timeout=30)
        deadline = started + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                _, new, _ = self.vm.run(self.key, "cat /proc/sys/kernel/random/boot_id", timeout=30)
                if new.strip() and new.strip() != old.strip():
                    return time.monotonic() - started
            time.sleep(5)
        raise BuildError(f"the guest did not come back from a reboot within {timeout:.0f} s")

    def wait_for_boot_sequence(self, timeout: float = 900) -> None:
        """Until flower-appliance-configure.service has finished (either way)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, out, _ = self.run("systemctl show -p ActiveState --value flower-appliance-configure.service")
            if out.strip() in ("active", "failed"):
                return
            time.sleep(5)
        raise BuildError("the appliance boot sequence did not finish in time")

    def collect(self, dest: Path) -> None:
        """Keep the serial console, the guest journal and the appliance status."""
        dest.mkdir(parents=True, exist_ok=True)
        for console in (self.vm.serial_log, *sorted(self.vm.workdir.glob("serial-attempt-*.log"))):
            if console.exists():
                (dest / console.name).write_bytes(console.read_bytes())
        for name, command in (
            ("journal.txt", "journalctl -b --no-pager -o short-monotonic"),
            ("status.json", "cat /run/flower/status.json"),
            ("status.txt", "cat /run/flower/status.txt"),
        ):
            with contextlib.suppress(Exception):
                _, out, _ = self.run(command, timeout=120)
                (dest / name).write_text(out)
        (dest / "qmp-events.json").write_text(json.dumps(self.vm.event_names()))


@dataclass
class StartedAppliance:
    """A VM that has been started with its CONTEXT CD but not yet waited for."""

    vm: VirtualMachine
    key: paramiko.PKey
    key_file: Path
    workdir: Path

    def wait_for_ssh(self, timeout: float = 900, stall_timeout: float = STALL_TIMEOUT) -> BootedAppliance:
        """Until root can log in (a stalled boot started once more: launcher.boot_to_ssh)."""
        seconds = boot_to_ssh(self.vm, self.key, "root", timeout, stall_timeout)
        return BootedAppliance(self.vm, self.key, self.key_file, seconds, self.workdir)


@contextlib.contextmanager
def start(
    image: Path,
    workdir: Path,
    context: dict[str, str],
    *,
    firmware: str,
    machine: str = "q35",
    memory: int = 2048,
    cpus: int = 2,
    vfio: tuple[str, ...] = (),
    token: str = "",
    accel: accel_probe.Accelerator | None = None,
) -> Iterator[StartedAppliance]:
    """Start `image` with a CONTEXT CD (the context, the GUEST_NET network and a fresh SSH key for root)
    and yield at once, so that several VMs can boot side by side; the VM stops when the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "id_ed25519"
    key = new_key(key_file)
    variables = {**GUEST_NET, "SSH_PUBLIC_KEY": public_line(key), **context}
    iso = context_iso(workdir / "context.iso", variables, token=token)
    spec = VmSpec(
        image,
        firmware=firmware,
        machine=machine,
        memory=memory,
        cpus=cpus,
        accel=accel or accel_probe.for_disk(image),
        cdroms=(iso,),
        vfio=vfio,
    )
    with VirtualMachine(spec, workdir / "vm") as vm:
        yield StartedAppliance(vm, key, key_file, workdir)


@contextlib.contextmanager
def boot(
    image: Path,
    workdir: Path,
    context: dict[str, str],
    *,
    firmware: str,
    machine: str = "q35",
    memory: int = 2048,
    cpus: int = 2,
    vfio: tuple[str, ...] = (),
    token: str = "",
    accel: accel_probe.Accelerator | None = None,
    ssh_timeout: float = 900,
) -> Iterator[BootedAppliance]:
    """Boot `image` with a CONTEXT CD; yield once root can log in over SSH."""
    with start(
        image,
        workdir,
        context,
        firmware=firmware,
        machine=machine,
        memory=memory,
        cpus=cpus,
        vfio=vfio,
        token=token,
        accel=accel,
    ) as started:
        yield started.wait_for_ssh(ssh_timeout)
