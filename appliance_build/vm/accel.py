"""Choose QEMU's accelerator by booting something tiny, not by opening /dev/kvm.

On some hosts /dev/kvm opens but a guest kernel aborts or hangs under KVM
(nested virtualisation without the MSRs a kernel needs). The only honest test
is to boot a Linux kernel with a one-line initramfs under KVM and wait for it
to print; if it does not within the timeout, use TCG and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cache import file_sha256, inputs_hash, write_atomic
from ..paths import cache_root
from ..progress import say
from .cpio import write_initramfs

MARKER = "FLOWER-ACCEL-PROBE-OK"
QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    cpu: str  # the -cpu model that goes with it
    reason: str

    def qemu_args(self) -> list[str]:
        if self.name == "tcg":
            return ["-accel", "tcg,thread=multi", "-cpu", self.cpu]
        return ["-accel", "kvm", "-cpu", self.cpu]


TCG = Accelerator("tcg", "max", "")


def _probe_initramfs(target: Path, busybox: Path) -> None:
    init = f"#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"
    write_initramfs(
        target,
        {"init": (init.encode(), 0o755), "bin/busybox": (busybox.read_bytes(), 0o755)},
    )


def kvm_boots(kernel: Path, *, qemu: str = QEMU, timeout: float = 25.0) -> tuple[bool, str]:
    """Boot `kernel` under KVM with -cpu host; True only if the guest's init printed."""
    busybox = shutil.which("busybox")
    if busybox is None:
        return (
            False,
            "busybox (package busybox-static) is missing, cannot build the probe initramfs",
        )
    with tempfile.TemporaryDirectory(prefix="accel-probe-") as tmp:
        initrd = Path(tmp) / "initrd.gz"
        _probe_initramfs(initrd, Path(busybox))
        argv = [
            qemu,
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 panic=-1 quiet",
        ]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return False, f"a kernel under KVM printed nothing within {timeout:.0f} s"
    text = out.decode(errors="replace")
    if MARKER in text:
        return True, "a kernel booted under KVM with -cpu host"
    last = (text.strip().splitlines() or ["no output"])[-1][:160]
    return False, f"a kernel under KVM did not boot (QEMU exit {proc.returncode}: {last})"


def choose(kernel: Path, *, qemu: str = QEMU, timeout: float = 25.0) -> Accelerator:
    """The accelerator to use for this host, remembered until the host reboots.

    FLOWER_ACCEL=tcg|kvm forces a choice (kvm still uses -cpu host).
    """
    forced = os.environ.get("FLOWER_ACCEL", "").lower()
    if forced == "tcg":
        return Accelerator("tcg", "max", "forced by FLOWER_ACCEL=tcg")
    if forced == "kvm":
        return Accelerator("kvm", "host", "forced by FLOWER_ACCEL=kvm")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return _announce(Accelerator("tcg", "max", "/dev/kvm is missing or not accessible"))
    record = cache_root() / "accel-probe.json"
    key = inputs_hash({"boot_id": _boot_id(), "qemu": _qemu_version(qemu), "kernel": file_sha256(kernel)})
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            return _announce(Accelerator(**saved["accelerator"]), cached=True)
    say("probing the accelerator: booting a tiny kernel under KVM ...")
    started = time.monotonic()
    ok, why = kvm_boots(kernel, qemu=qemu, timeout=timeout)
    why += f" ({time.monotonic() - started:.1f} s)"
    accel = Accelerator("kvm", "host", why) if ok else Accelerator("tcg", "max", why)
    write_atomic(record, json.dumps({"key": key, "accelerator": asdict(accel)}))  # builds run in parallel
    return _announce(accel)


def find_probe_kernel(disk: Path) -> Path | None:
    """A kernel to boot for the probe: the base's own (next to a base disk), or any cached
    base's (for a built image), else the host's."""
    candidates = [disk.parent / "vmlinuz", *sorted((cache_root() / "base").glob("*/vmlinuz"))]
    candidates += sorted(Path("/boot").glob("vmlinuz-*"))
    return next((c for c in candidates if c.is_file()), None)


def for_disk(disk: Path) -> Accelerator:
    """The accelerator to boot `disk` (a base disk or a built image) with on this host."""
    kernel = find_probe_kernel(disk)
    if kernel is None:
        return Accelerator("tcg", "max", "no kernel available to probe KVM with")
    return choose(kernel)


def _announce(accel: Accelerator, cached: bool = False) -> Accelerator:
    suffix = " [probe result remembered for this host boot]" if cached else ""
    if accel.name == "tcg":
        say(f"accelerator: TCG (software emulation, slow) because {accel.reason}{suffix}")
    else:
        say(f"accelerator: KVM, {accel.reason}{suffix}")
    return accel


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "missing"
    return out.stdout.splitlines()[0] if out.stdout else "unknown"
