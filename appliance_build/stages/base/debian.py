"""debian-12, debian-13: bootstrap a bootable base disk from the Debian mirror alone.

One recipe, parametrised by the suite (appliance_build/suites.py: bookworm, trixie):

1. mmdebstrap a root (kernel, systemd, cloud-init, sshd, GRUB binaries)
2. configure it as data (fstab, GRUB defaults, cloud-init datasources, networking, no host keys)
3. write an MBR disk with the ESP and the root filled in at their offsets
4. boot the root's own kernel once (direct kernel boot) with init= a script
   that installs GRUB for BIOS and for UEFI (removable path) and powers off
5. convert to qcow2 in the cache
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from ... import nvidia_driver
from ...config import PACKAGE_PIN_RE, BaseConfig, _size_mib
from ...errors import BuildError
from ...progress import run, say
from ...suites import SUITES, DebianSuite
from ...vm import accel
from .disk_layout import Layout, make_disk

ESP_MIB = 128
BOOTLOADER_MARKER = "FLOWER-BOOTLOADER-INSTALLED"
# Bump when the recipe below changes in a way the inputs do not show.
RECIPE_VERSION = 4

PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "initramfs-tools",
    "zstd",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub2-common",
    "cloud-init",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
    "dosfstools",
    "openssh-server",
    "sudo",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "ca-certificates",
    "python3",
    "procps",
    "less",
    "curl",
    "gnupg",
    "apt-utils",
    "qemu-guest-agent",
)

# Networking "networkd" (debian-13): cloud-init takes the first available renderer of eni,
# sysconfig, netplan, network-manager, ..., networkd (cloudinit/net/renderers.py; eni needs
# ifup/ifquery and /etc/network/interfaces, netplan the netplan binary). Without ifupdown and
# netplan it writes systemd-networkd units (/etc/systemd/network/10-cloud-init-*.network);
# NETWORKD_CLOUD_CFG pins that choice. networkd is part of Debian 13's systemd package;
# systemd-resolved puts the DNS servers networkd learns into /etc/resolv.conf. isc-dhcp-client
# goes (Debian 13's package is marked deprecated: ISC ended the client,
# https://www.isc.org/blogs/isc-dhcp-eol/); cloud-init's own ephemeral DHCP gets the first
# alternative of its dependency, dhcpcd-base.
NETWORKD_PACKAGES = (
    *(p for p in PACKAGES if p not in ("ifupdown", "isc-dhcp-client")),
    "systemd-resolved",
)
NETWORKD_CLOUD_CFG = """# Debian 13: systemd-networkd renders the network config (cloud-init's "Network output
# policy", https://docs.cloud-init.io/en/latest/reference/network-config.html).
system_info:
  network:
    renderers: [ networkd ]
"""
NETWORKD_UNITS = ("systemd-networkd.service", "systemd-resolved.service")
# systemctl enable in the chroot only makes the [Install] symlinks (it runs no manager).
NETWORKD_HOOK = f'chroot "$1" systemctl enable {" ".join(NETWORKD_UNITS)}'

INSTALL_BOOTLOADER = f"""#!/bin/sh
# Runs once as PID 1 of the bootstrap VM (init=), then powers it off.
set -eu
trap 'echo FLOWER-BOOTLOADER-FAILED; echo o > /proc/sysrq-trigger' EXIT
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mountpoint -q /run || mount -t tmpfs run /run
mkdir -p /boot/efi
mount /boot/efi
grub-install --target=i386-pc /dev/vda
grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram
grub-mkconfig -o /boot/grub/grub.cfg
umount /boot/efi
rm -f /usr/local/sbin/install-bootloader
sync
mount -o remount,ro / 2>/dev/null || sync
trap - EXIT
echo {BOOTLOADER_MARKER}
echo o > /proc/sysrq-trigger
"""

GRUB_DEFAULTS = """GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
"""

CLOUD_CFG = """# Flower appliance base: where cloud-init looks for its data.
# NoCloud (a 'cidata' CD) is how the image build hands in its temporary user;
# OpenNebula (the 'CONTEXT' CD) is how a deployed appliance gets network and SSH keys.
datasource_list: [ NoCloud, OpenNebula, None ]
# Appliance convention (as OpenNebula's): the context SSH key logs in as root.
disable_root: false
ssh_pwauth: false
# C.UTF-8 needs no locale generation on first boot.
locale: C.UTF-8
"""

SSH_HOSTKEYS_DROPIN = """[Service]
# Host keys are removed from the image; make them before sshd's config test.
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""


def suite_of(base: BaseConfig) -> DebianSuite:
    return SUITES[base.provider]


def packages(suite: DebianSuite) -> tuple[str, ...]:
    return NETWORKD_PACKAGES if suite.networking == "networkd" else PACKAGES


def inputs(base: BaseConfig) -> dict[str, Any]:
    suite = suite_of(base)
    # debian-12's keys and values are those of the bookworm-only recipe: its cache entries stay valid.
    networkd = {"networkd": [NETWORKD_CLOUD_CFG, NETWORKD_HOOK]} if suite.networking == "networkd" else {}
    # Only when set, so the keys of bases without NVIDIA's driver stay what they were.
    driver = {"nvidia_driver": base.nvidia_driver.as_dict()} if base.nvidia_driver is not None else {}
    return {
        "provider": suite.provider,
        "recipe": RECIPE_VERSION,
        "suite": suite.codename,
        "mirror": base.mirror,
        "security_mirror": base.security_mirror,
        "kernel": base.kernel,
        "root_size": base.root_size,
        "components": base.components,
        "extra_packages": base.extra_packages,
        "packages": packages(suite),
        "install_bootloader": INSTALL_BOOTLOADER,
        "grub": GRUB_DEFAULTS,
        "cloud_cfg": CLOUD_CFG,
        "ssh_dropin": SSH_HOSTKEYS_DROPIN,
        **networkd,
        **driver,
    }


def build(base: BaseConfig, out: Path, logs: Path) -> dict[str, Any]:
    """Build the base into directory `out` (disk.qcow2); return facts for the manifest."""
    work = out / "work"
    rootdir = work / "root"
    work.mkdir(parents=True)
    suite = suite_of(base)
    log = logs / f"base-{suite.provider}.log"
    timings: dict[str, float] = {}

    t = time.monotonic()
    _bootstrap(base, rootdir, log)
    timings["mmdebstrap"] = round(time.monotonic() - t, 1)
    extra_seconds = _pop_marker_seconds(rootdir)
    if extra_seconds is not None:
        timings["extra_packages_in_chroot"] = extra_seconds

    layout = Layout(
        esp_mib=ESP_MIB,
        root_mib=_size_mib(base.root_size),
        root_uuid=str(uuid.uuid4()),
        esp_volume_id=uuid.uuid4().hex[:8],
    )
    _configure(rootdir, layout, suite)
    kernel, initrd = _kernel_files(rootdir)
    shutil.copy2(kernel, work / "vmlinuz")
    shutil.copy2(initrd, work / "initrd.img")
    facts = _facts(rootdir)

    t = time.monotonic()
    raw = work / "disk.raw"
    make_disk(raw, rootdir, layout, log)
    shutil.rmtree(rootdir)
    timings["make_disk"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    chosen = accel.choose(work / "vmlinuz")
    _install_bootloader(raw, work / "vmlinuz", work / "initrd.img", layout, chosen, log)
    timings["install_bootloader"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "disk.qcow2")], log, label="qemu-img convert")
    timings["convert"] = round(time.monotonic() - t, 1)
    shutil.copy2(work / "vmlinuz", out / "vmlinuz")
    shutil.rmtree(work)
    facts.update(
        {
            "root_uuid": layout.root_uuid,
            "partitions": {"esp": 1, "root": 2, "label": "dos"},
            "firmware": ["bios", "uefi"],
            "timings_s": timings,
        }
    )
    (out / "base.json").write_text(json.dumps(facts, indent=2))
    return facts


EXTRA_TIMER = "var/tmp/flower-extra-packages.seconds"
EXTRA_LIST = "var/tmp/flower-extra-packages.list"

# Fixed text: the package names are data, read one per line from EXTRA_LIST into the
# positional parameters and handed to apt-get as separate arguments, never part of the
# script. mmdebstrap runs a hook with shell metacharacters as `sh -c HOOK exec ROOT`
# (mmdebstrap(1), "--customize-hook"), so $1 is the chroot directory.
EXTRA_PACKAGES_HOOK = f"""set -eu
root="$1"
set --
while IFS= read -r package; do set -- "$@" "$package"; done < "$root/{EXTRA_LIST}"
rm -f "$root/{EXTRA_LIST}"
start=$(date +%s.%N)
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -- "$@"
awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {{ print b - a }}' > "$root/{EXTRA_TIMER}"
"""


def _extra_packages_hooks(packages: tuple[str, ...], scratch: Path) -> list[str]:
    """Install the definition's extra packages (e.g. the NVIDIA driver, whose DKMS module is
    compiled here for the image's kernel, at host speed) in a timed customize hook.

    The list goes into the chroot as a file (mmdebstrap's `upload` special hook, whose
    arguments mmdebstrap splits like a shell: hence the quoted host path), read by the
    fixed EXTRA_PACKAGES_HOOK."""
    if not packages:
        return []
    for package in packages:
        if PACKAGE_PIN_RE.fullmatch(package) is None:
            raise BuildError(f"extra package {package!r} is not a Debian package name")
    listing = scratch / "flower-extra-packages.list"
    listing.write_text("".join(f"{package}\n" for package in packages))
    return [
        f"--customize-hook=upload {shlex.quote(str(listing))} /{EXTRA_LIST}",
        f"--customize-hook={EXTRA_PACKAGES_HOOK}",
    ]


def _pop_marker_seconds(root: Path) -> float | None:
    marker = root / EXTRA_TIMER
    if not marker.exists():
        return None
    seconds = round(float(marker.read_text().strip()), 1)
    marker.unlink()
    return seconds


def _bootstrap(base: BaseConfig, rootdir: Path, log: Path) -> None:
    suite = suite_of(base).codename
    components = " ".join(base.components)
    sources = [
        f"deb {base.mirror} {suite} {components}",
        f"deb {base.mirror} {suite}-updates {components}",
        f"deb {base.security_mirror} {suite}-security {components}",
    ]
    networkd = [f"--customize-hook={NETWORKD_HOOK}"] if suite_of(base).networking == "networkd" else []
    driver: list[str] = []
    if base.nvidia_driver is not None:
        # After the extra packages (the kernel headers DKMS builds against): NVIDIA's pinned driver,
        # its key verified again here (appliance_build/nvidia_driver.py, the one route implementation).
        route = base.nvidia_driver
        say(f"NVIDIA driver {route.version} ({route.kernel_modules} modules) from {route.url}")
        key = nvidia_driver.preflight(route)
        spec = rootdir.parent / "flower-nvidia-driver.json"
        nvidia_driver.write_spec(spec, route, key, log.with_name("nvidia-driver.log"))
        driver = [f"--customize-hook={nvidia_driver.hook(spec)}"]
    more = " plus the extra packages" if base.extra_packages else ""
    say(f"mmdebstrap {suite} from {base.mirror} (about 2 minutes{more})")
    run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--format=directory",
            f"--components={','.join(base.components)}",
            *_extra_packages_hooks(base.extra_packages, rootdir.parent),
            *driver,
            *networkd,
            f"--include={','.join((*packages(suite_of(base)), base.kernel))}",
            '--aptopt=Acquire::Retries "3"',
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            suite,
            str(rootdir),
            *sources,
        ],
        log,
        label="mmdebstrap",
        timeout=1800,
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _configure(root: Path, layout: Layout, suite: DebianSuite) -> None:
    _write(root / "etc/fstab", layout.fstab())
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    _write(root / "etc/default/grub", GRUB_DEFAULTS)
    _write(root / "etc/cloud/cloud.cfg.d/90-flower-base.cfg", CLOUD_CFG)
    _write(root / "etc/systemd/system/ssh.service.d/10-hostkeys.conf", SSH_HOSTKEYS_DROPIN)
    _write(root / "etc/hostname", "localhost\n")
    if suite.networking == "networkd":
        _write(root / "etc/cloud/cloud.cfg.d/91-flower-networkd.cfg", NETWORKD_CLOUD_CFG)
        # mmdebstrap copied the build host's resolv.conf in; the image's is resolved's stub
        # (systemd-resolved(8), "/etc/resolv.conf").
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    else:
        _write(
            root / "etc/network/interfaces",
            "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n",
        )
    _write(root / "usr/local/sbin/install-bootloader", INSTALL_BOOTLOADER, 0o755)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root / "etc/machine-id", "")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / leftover).glob("*"):
            if item.is_file():
                item.unlink()


def _kernel_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise BuildError(f"expected one kernel and initrd in the bootstrap, found {kernels} {initrds}")
    return kernels[0], initrds[0]


def _facts(root: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    packages = dict(line.split("\t", 1) for line in out.stdout.splitlines() if line)
    kernel = _kernel_files(root)[0].name.removeprefix("vmlinuz-")
    os_release = dict(line.split("=", 1) for line in (root / "etc/os-release").read_text().splitlines() if "=" in line)
    facts: dict[str, Any] = {
        "distribution": os_release.get("PRETTY_NAME", "").strip('"'),
        "debian_version": (root / "etc/debian_version").read_text().strip(),
        "kernel": kernel,
        "packages": packages,
    }

    # Debian installs the module as nvidia-current.ko (module name "nvidia", aliased in modprobe.d)
    def field(module: Path, name: str) -> str:
        out = subprocess.run(["modinfo", "-F", name, str(module)], capture_output=True, text=True, check=False)
        return out.stdout.strip()

    for module in sorted((root / "lib/modules" / kernel).rglob("nvidia*.ko*")):
        if field(module, "name") == "nvidia":
            facts["nvidia_module"] = {"path": "/" + str(module.relative_to(root)), "version": field(module, "version")}
    record = root / nvidia_driver.RECORD  # NVIDIA's repository route: what it installed and checked
    if record.is_file():
        facts["nvidia_driver"] = json.loads(record.read_text())
    return facts


def _install_bootloader(
    raw: Path, kernel: Path, initrd: Path, layout: Layout, chosen: accel.Accelerator, log: Path
) -> None:
    console = log.parent / "base-bootloader-console.log"
    say(f"installing GRUB (BIOS + UEFI) from a one-shot VM; console: {console}")
    run(
        [
            "qemu-system-x86_64",
            *chosen.qemu_args(),
            "-m",
            "1024",
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{console}",
            "-drive",
            f"file={raw},format=raw,if=virtio,cache=unsafe",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initrd),
            "-append",
            f"root=UUID={layout.root_uuid} rw init=/usr/local/sbin/install-bootloader "
            "console=ttyS0 panic=-1 net.ifnames=0",
        ],
        log,
        label="GRUB install VM",
        timeout=900,
    )
    if BOOTLOADER_MARKER not in console.read_text(errors="replace"):
        tail = console.read_text(errors="replace").splitlines()[-12:]
        raise BuildError(f"GRUB installation did not complete; see {console}:\n  " + "\n  ".join(tail))
