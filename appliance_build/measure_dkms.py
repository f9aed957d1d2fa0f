"""Measure the other NVIDIA driver route: DKMS inside the TCG build VM.

The GPU image installs the driver in the bootstrap chroot, where DKMS compiles
the module at host speed. This boots the plain debian-12 base (no driver) under
the same accelerator a build would use and times the identical package install
(the GPU definition's own extra_packages) inside the guest, so the choice is
measured, not assumed. The install runs detached in the guest and is polled,
with progress; past --limit-minutes it is stopped and recorded as "at least".
Result: build/measurements/dkms-in-guest.json, beside the chroot route's figure
from the cached GPU base.

    python -m appliance_build.measure_dkms [--limit-minutes 90]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

import paramiko

from . import config
from .artifacts import BuildTree
from .progress import interrupt_on_sigterm, say
from .stages import base as base_stage
from .vm import isos
from .vm.accel import for_disk as accel_for_disk
from .vm.launcher import VirtualMachine, VmSpec, boot_to_ssh, new_key, public_line

LOG = "/root/dkms.log"
RC = "/root/dkms.rc"
# the module file DKMS made, by its module name (Debian installs it as nvidia-current.ko)
FIND_MODULE = (
    'for f in $(find /lib/modules -name \'nvidia*.ko*\'); do [ "$(modinfo -F name "$f")" = nvidia ] && echo "$f"; done'
)


def install_command(packages: tuple[str, ...]) -> str:
    """The detached in-guest install: apt output to LOG, exit code to RC when it ends."""
    names = " ".join(shlex.quote(p) for p in packages)
    script = (
        "export DEBIAN_FRONTEND=noninteractive; "
        f"{{ apt-get update -q && apt-get install -y -q --no-install-recommends {names}; }} > {LOG} 2>&1; "
        f"echo $? > {RC}"
    )
    # no fd of the SSH channel may stay open in the background job, or the call would wait for it
    return f"nohup sh -c {shlex.quote(script)} </dev/null >/dev/null 2>&1 &"


def chroot_route() -> dict[str, Any] | None:
    """The chroot route's own timing, from the cached GPU base (None if that base is not built)."""
    gpu = config.load("supernode-gpu")
    entry = base_stage.cache_entry(gpu.base)[1]
    facts_file = entry / "base.json"
    if not facts_file.is_file():
        return None
    timings = json.loads(facts_file.read_text()).get("timings_s", {})
    return {"extra_packages_in_chroot_s": timings.get("extra_packages_in_chroot"), "base": str(entry)}


def poll(vm: VirtualMachine, key: paramiko.PKey, started: float, limit_s: float) -> tuple[float, str | None]:
    """Seconds from `started` until RC appears (or the limit), and its content (None: still running)."""
    last_report = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        _, rc, _ = vm.run(key, f"cat {RC} 2>/dev/null", timeout=60)
        if rc.strip():
            return elapsed, rc.strip()
        if elapsed > limit_s:
            return elapsed, None
        if time.monotonic() - last_report >= 120:
            _, tail, _ = vm.run(key, f"tail -n 1 {LOG}", timeout=60)
            say(f"   guest DKMS install: {elapsed:.0f} s ... {tail.strip()[:100]}")
            last_report = time.monotonic()
        time.sleep(20)


def main(argv: list[str] | None = None) -> int:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(prog="python -m appliance_build.measure_dkms", description=__doc__.split("\n")[0])
    parser.add_argument("--limit-minutes", type=float, default=90.0, help="stop and record a lower bound after this")
    args = parser.parse_args(argv)
    if args.limit_minutes <= 0:
        parser.error(f"--limit-minutes must be positive, got {args.limit_minutes}")
    out = BuildTree.default().measurements
    out.mkdir(parents=True, exist_ok=True)
    cpu, gpu = config.load("supernode-cpu"), config.load("supernode-gpu")
    base = base_stage.ensure(cpu.base, out / "logs")
    key = new_key()
    # the base's cloud.cfg has disable_root: false, so root gets the key too
    user_data = f"#cloud-config\nssh_authorized_keys: ['{public_line(key)}']\n"
    seed = isos.nocloud_iso(out / "seed.iso", user_data, "instance-id: dkms-measure\n")
    spec = VmSpec(
        base.disk, firmware="bios", machine="q35", memory=3072, accel=accel_for_disk(base.disk), cdroms=(seed,)
    )
    components = " ".join(gpu.base.components)
    with VirtualMachine(spec, out / "dkms-vm") as vm:
        boot_to_ssh(vm, key, timeout=900)
        vm.run(key, "cloud-init status --wait >/dev/null 2>&1; true", timeout=900)
        vm.run(key, f"sed -i 's/ main$/ {components}/' /etc/apt/sources.list")
        say(f"{' '.join(gpu.base.extra_packages)}: apt install inside the {spec.accel.name} guest (timed) ...")
        started = time.monotonic()
        vm.run(key, install_command(gpu.base.extra_packages), timeout=60)
        seconds, rc = poll(vm, key, started, args.limit_minutes * 60)
        _, module, _ = vm.run(key, FIND_MODULE, timeout=120)
        _, tail, _ = vm.run(key, f"tail -n 8 {LOG}", timeout=60)
        (out / "dkms-in-guest.log").write_text(vm.run(key, f"cat {LOG}", timeout=120)[1])
    result = {
        "route": "guest-dkms",
        "accelerator": spec.accel.name,
        "vcpus": spec.cpus,
        "memory_mib": spec.memory,
        "packages": list(gpu.base.extra_packages),
        "completed": rc is not None,
        "seconds" if rc is not None else "seconds_at_least": round(seconds, 1),
        "exit_code": None if rc is None else int(rc),
        "module": module.strip() or None,
        "ok": rc == "0" and bool(module.strip()),
        "tail": tail.strip().splitlines(),
        "chroot_route": chroot_route(),
    }
    target = out / "dkms-in-guest.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    verdict = f"{seconds:.0f} s" if rc is not None else f"not finished after {seconds:.0f} s (stopped)"
    say(f"DKMS inside the {spec.accel.name} guest: {verdict}, ok={result['ok']}; {target}")
    # a run stopped at the limit is a measurement too (a lower bound); only a failed install is an error
    return 0 if result["ok"] or rc is None else 1


if __name__ == "__main__":
    sys.exit(main())
