"""Measure the other NVIDIA driver route: DKMS inside the TCG build VM.

The GPU image installs the driver in the bootstrap chroot, where DKMS compiles
nvidia.ko at host speed. This boots the plain debian-12 base (no driver) under
the same accelerator a build would use and times the identical install inside
the guest, so the choice is measured, not assumed. Result: build/measurements/
dkms-in-guest.json.

    python -m appliance_build.measure_dkms
"""

from __future__ import annotations

import json
import sys
import time

from . import config
from .paths import build_root
from .progress import say
from .stages import base as base_stage
from .vm import appliance, isos
from .vm.launcher import VirtualMachine, VmSpec, new_key, public_line

PACKAGES = "linux-headers-$(uname -r) nvidia-kernel-dkms nvidia-smi libcuda1 libnvidia-ml1"


def main() -> int:
    out = build_root() / "measurements"
    out.mkdir(parents=True, exist_ok=True)
    cpu = config.load("supernode-cpu")
    base = base_stage.ensure(cpu.base, out / "logs")
    key = new_key()
    # the base's cloud.cfg has disable_root: false, so root gets the key too
    user_data = f"#cloud-config\nssh_authorized_keys: ['{public_line(key)}']\n"
    seed = isos.nocloud_iso(out / "seed.iso", user_data, "instance-id: dkms-measure\n")
    spec = VmSpec(base.disk, firmware="bios", machine="q35", memory=3072,
                  accel=appliance.probe_accelerator(base.disk), cdroms=(seed,))  # fmt: skip
    with VirtualMachine(spec, out / "dkms-vm") as vm:
        vm.wait_for_ssh(key, timeout=900)
        enable = "sed -i 's/ main$/ main contrib non-free non-free-firmware/' /etc/apt/sources.list"
        vm.run(key, enable)
        say("apt-get update + install nvidia-kernel-dkms inside the guest (timed) ...")
        started = time.monotonic()
        _, stdout, _ = vm.run(
            key,
            f"export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
            f"apt-get install -y -q --no-install-recommends {PACKAGES} > /root/dkms.log 2>&1; echo rc=$?; "
            "tail -5 /root/dkms.log; find /lib/modules -name 'nvidia.ko*'",
            timeout=4 * 3600,
        )
        seconds = round(time.monotonic() - started, 1)
    result = {
        "route": "guest-dkms",
        "accelerator": spec.accel.name,
        "vcpus": spec.cpus,
        "seconds": seconds,
        "ok": "rc=0" in stdout and "nvidia.ko" in stdout,
        "tail": stdout.strip().splitlines()[-8:],
    }
    (out / "dkms-in-guest.json").write_text(json.dumps(result, indent=2) + "\n")
    say(f"DKMS inside the {spec.accel.name} guest: {seconds:.0f} s (ok={result['ok']})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
