"""Test support for the GPU validation scripts (scripts/validate-gpu.sh, validate-host-gpu.sh).

Each test gets:
  * a fake root tree in tmp_path/root (proc/, sys/, etc/, var/) passed with --root, and
  * a fake bin dir in tmp_path/bin with `lspci`, `lsmod`, `nvidia-smi` and `docker`, small sh
    scripts whose stdout/stderr/exit code come from files under tmp_path/state/<tool>/<key>.*
    (see FAKE_TOOL). Every call is appended to tmp_path/state/<tool>.calls.

The scripts run with a scrubbed environment: PATH=<fake bin>:/usr/bin:/bin, LC_ALL=C.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = REPO / "scripts"
VALIDATE_GPU = SCRIPTS / "validate-gpu.sh"
VALIDATE_HOST_GPU = SCRIPTS / "validate-host-gpu.sh"

TS = r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\]"

# Behaviour key per invocation:
#   nvidia-smi: "query" (name,memory.total), "driver" (driver_version), else "default"
#   docker:     first argument ("run", "info", ...); "image_inspect" for `docker image inspect`;
#               "info_cdi" for `docker info --format {{json .CDISpecDirs}}`, "run_cdi" for a
#               `docker run` with a CDI device (nvidia.com/gpu=...)
#   nvidia-ctk: "<arg1>_<arg2>" ("cdi_list")
#   lspci:      "k_<addr>" for `lspci -k -s <addr>`, else "default"
#   lsmod:      "default"
FAKE_TOOL = r"""#!/bin/sh
tool=${0##*/}
state=${FAKE_STATE:?}
printf '%s\n' "$*" >> "$state/$tool.calls"
key=default
case "$tool" in
  nvidia-smi)
    case "$*" in
      *driver_version*) key=driver ;;
      *name,memory.total*) key=query ;;
    esac ;;
  docker)
    key=$1
    [ "$1" = image ] && key="image_$2"
    case "$*" in
      info*CDISpecDirs*) key=info_cdi ;;
      run*nvidia.com/gpu=*) key=run_cdi ;;
    esac ;;
  nvidia-ctk)
    key="$1_$2" ;;
  lspci)
    case "$*" in
      *-k*) for a in "$@"; do last=$a; done; key="k_$last" ;;
    esac ;;
esac
d="$state/$tool"
# <key>.sleep: hang (exec, so that `timeout` kills the process holding stdout)
[ -f "$d/$key.sleep" ] && exec sleep "$(cat "$d/$key.sleep")"
[ -f "$d/$key.out" ] && cat "$d/$key.out"
[ -f "$d/$key.err" ] && cat "$d/$key.err" >&2
rc=0
[ -f "$d/$key.rc" ] && rc=$(cat "$d/$key.rc")
exit "$rc"
"""

TOOLS = ("lspci", "lsmod", "nvidia-smi", "docker", "nvidia-ctk")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def level_lines(self, level: str) -> list[str]:
        """Lines `[ts] [LEVEL] ...` with the timestamp prefix stripped."""
        pat = re.compile(rf"^{TS} \[{re.escape(level)}\] (.*)$")
        return [m.group(1) for line in self.lines if (m := pat.match(line))]

    @property
    def fixes(self) -> list[str]:
        pat = re.compile(rf"^{TS}   FIX: (.*)$")
        return [m.group(1) for line in self.lines if (m := pat.match(line))]

    @property
    def notes(self) -> list[str]:
        pat = re.compile(rf"^{TS}   NOTE: (.*)$")
        return [m.group(1) for line in self.lines if (m := pat.match(line))]


@dataclass
class Sandbox:
    tmp: Path
    root: Path = field(init=False)
    bin: Path = field(init=False)
    state: Path = field(init=False)
    env_extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.tmp / "root"
        self.bin = self.tmp / "bin"
        self.state = self.tmp / "state"
        for d in (self.root, self.bin, self.state):
            d.mkdir(parents=True, exist_ok=True)
        for tool in TOOLS:
            self.install_tool(tool)

    # -- fake commands -----------------------------------------------------------------
    def install_tool(self, tool: str) -> None:
        path = self.bin / tool
        path.write_text(FAKE_TOOL)
        path.chmod(0o755)
        (self.state / tool).mkdir(exist_ok=True)

    def remove_tool(self, tool: str) -> None:
        (self.bin / tool).unlink()

    def fake(self, tool: str, key: str = "default", out: str = "", rc: int = 0, err: str = "") -> None:
        d = self.state / tool
        (d / f"{key}.out").write_text(out)
        (d / f"{key}.rc").write_text(str(rc))
        (d / f"{key}.err").write_text(err)

    def calls(self, tool: str) -> list[str]:
        p = self.state / f"{tool}.calls"
        return p.read_text().splitlines() if p.exists() else []

    # -- fake root tree ----------------------------------------------------------------
    def write(self, rel: str, content: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        return p

    def remove(self, rel: str) -> None:
        p = self.root / rel
        if p.is_symlink() or p.is_file():
            p.unlink()

    def write_json(self, rel: str, data: object) -> Path:
        return self.write(rel, json.dumps(data))

    def symlink(self, rel: str, target: str) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            p.unlink()
        p.symlink_to(target)

    # -- running -----------------------------------------------------------------------
    def env(self, path: str | None = None) -> dict[str, str]:
        env = {
            "PATH": path or f"{self.bin}:/usr/bin:/bin",
            "LC_ALL": "C",
            "HOME": str(self.tmp),
            "FAKE_STATE": str(self.state),
        }
        env.update(self.env_extra)
        return env

    def run(
        self,
        script: Path,
        *args: str,
        root: bool = True,
        path: str | None = None,
        timeout: float = 20,
    ) -> Result:
        argv = ["bash", str(script)]
        if root:
            argv += ["--root", str(self.root)]
        argv += list(args)
        proc = subprocess.run(argv, env=self.env(path), capture_output=True, text=True, timeout=timeout, check=False)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def path_without(self, *missing: str) -> str:
        """A PATH of symlinks to /usr/bin tools, minus `missing` (e.g. python3), after bin."""
        alt = self.tmp / "altbin"
        alt.mkdir(exist_ok=True)
        for src in (Path("/usr/bin"), Path("/bin")):
            for exe in src.iterdir():
                if exe.name in missing or (alt / exe.name).exists():
                    continue
                if os.access(exe, os.X_OK) and not exe.is_dir():
                    (alt / exe.name).symlink_to(exe)
        return f"{self.bin}:{alt}"


# ---------------------------------------------------------------------------------------
# VM (validate-gpu.sh) sandbox: a healthy GPU VM by default
# ---------------------------------------------------------------------------------------
LSMOD_OK = """Module                  Size  Used by
nvidia_uvm           4956160  0
nvidia_drm            122880  0
nvidia_modeset       1355776  1 nvidia_drm
nvidia              54337536  2 nvidia_uvm,nvidia_modeset
video                  73728  1 nvidia_modeset
"""
SUPERNODE_IMAGE = "flwr/supernode:1.22.0-gpu"
GPU_LINE = "GPU 0: NVIDIA A100-PCIE-40GB (UUID: GPU-8f3c6a2e-0000-0000-0000-000000000000)\n"
DRIVER = "550.127.05"


def make_vm(tmp_path: Path) -> Sandbox:
    """A healthy GPU VM: driver loaded, nvidia-smi OK, runtime configured, image local."""
    sb = Sandbox(tmp_path)
    sb.fake("lsmod", out=LSMOD_OK)
    sb.fake("nvidia-smi", "query", out="NVIDIA A100-PCIE-40GB, 40960 MiB\n")
    sb.fake("nvidia-smi", "driver", out=f"{DRIVER}\n")
    sb.fake("docker", "image_inspect", out="sha256:0123456789abcdef\n")
    sb.fake(
        "docker",
        "run",
        out=GPU_LINE,
    )
    sb.fake("docker", "info", out='{"io.containerd.runc.v2":{},"runc":{"path":"runc"}}\n')
    # Docker >= 25 with the cdi feature, the spec the boot generated, nvidia-ctk listing it
    sb.fake("docker", "info_cdi", out='["/etc/cdi","/var/run/cdi"]\n')
    sb.fake("docker", "run_cdi", out=GPU_LINE)
    sb.write("var/run/cdi/nvidia.yaml", "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    sb.fake(
        "nvidia-ctk", "cdi_list", out="nvidia.com/gpu=0\nnvidia.com/gpu=all\n", err="INFO[0000] Found 2 CDI devices\n"
    )
    sb.write_json(
        "etc/docker/daemon.json",
        {
            "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
        },
    )
    sb.write_json(
        "etc/flower/build.json",
        {
            "flavor": "gpu",
            "supernode_image": SUPERNODE_IMAGE,
            "nvidia_driver_version": DRIVER,
        },
    )
    return sb


# ---------------------------------------------------------------------------------------
# Host (validate-host-gpu.sh) sandbox: a correctly prepared KVM host by default
# ---------------------------------------------------------------------------------------
GPU = "0000:e1:00.0"
GPU_AUDIO = "0000:e1:00.1"
INTEL_NIC = "0000:00:1f.6"
LSPCI_OK = "".join(
    f"{line}\n"
    for line in (
        f"{INTEL_NIC} Ethernet controller [0200]: Intel Corporation Ethernet Connection (7) I219-LM"
        " [8086:15bb] (rev 10)",
        f"{GPU} VGA compatible controller [0300]: NVIDIA Corporation GA102 [GeForce RTX 3090] [10de:2204] (rev a1)",
        f"{GPU_AUDIO} Audio device [0403]: NVIDIA Corporation GA102 High Definition Audio"
        " Controller [10de:1aef] (rev a1)",
    )
)
LSMOD_HOST_OK = """Module                  Size  Used by
vfio_pci               16384  0
vfio_pci_core          94208  1 vfio_pci
vfio_iommu_type1       49152  0
vfio                   69632  3 vfio_pci_core,vfio_iommu_type1,vfio_pci
kvm_intel             487424  0
"""
PCI_CONF_DEFAULT = """# This option specifies the main filters for PCI card monitoring. The format
# is the same as used by lspci to filter on PCI card by vendor:device(:class)
# identification. Several filters can be added as a list, or separated
# by commas. The NULL filter will retrieve all PCI cards.
#
# For example
# :filter:
#   - '10de:*'      # all NVIDIA VGA cards
#   - '10de:11bf'   # only GK104GL [GRID K2]
#   - '*:10d3'      # only 82574L Gigabit Network cards
#
# :filter: '*:*'    # all devices
#
:filter: '0:0'

# The PCI cards list restricted by the :filter option above can be even more
# filtered by the list of exact PCI addresses (bus:device.func).
:short_address: []

:device_name: []
"""
PCI_CONF_OK = PCI_CONF_DEFAULT.replace(":filter: '0:0'", ":filter: '10de:*'")


def set_driver(sb: Sandbox, addr: str, driver: str | None) -> None:
    dev = f"sys/bus/pci/devices/{addr}"
    (sb.root / dev).mkdir(parents=True, exist_ok=True)
    if driver is None:
        sb.remove(f"{dev}/driver")
    else:
        sb.symlink(f"{dev}/driver", f"../../../../bus/pci/drivers/{driver}")


def add_pci_device(sb: Sandbox, addr: str, vendor: str, device: str, cls: str, driver: str | None, group: int) -> None:
    dev = f"sys/bus/pci/devices/{addr}"
    sb.write(f"{dev}/vendor", f"0x{vendor}\n")
    sb.write(f"{dev}/device", f"0x{device}\n")
    sb.write(f"{dev}/class", f"0x{cls}\n")
    set_driver(sb, addr, driver)
    sb.symlink(f"{dev}/iommu_group", f"../../../../kernel/iommu_groups/{group}")
    sb.symlink(f"sys/kernel/iommu_groups/{group}/devices/{addr}", f"../../../../devices/pci0000:00/{addr}")


def make_host(tmp_path: Path) -> Sandbox:
    """A correctly prepared KVM host: IOMMU on, vfio-pci loaded, GPU + audio on vfio-pci."""
    sb = Sandbox(tmp_path)
    sb.write(
        "proc/cmdline",
        "BOOT_IMAGE=/boot/vmlinuz-6.8.0-51-generic root=/dev/sda2 ro intel_iommu=on iommu=pt\n",
    )
    sb.write("proc/cpuinfo", "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    for group in (0, 1, 2):
        (sb.root / f"sys/kernel/iommu_groups/{group}/devices").mkdir(parents=True, exist_ok=True)
    for drv in ("vfio-pci", "nvidia", "snd_hda_intel", "e1000e"):
        (sb.root / f"sys/bus/pci/drivers/{drv}").mkdir(parents=True, exist_ok=True)
    add_pci_device(sb, INTEL_NIC, "8086", "15bb", "020000", "e1000e", 12)
    add_pci_device(sb, GPU, "10de", "2204", "030000", "vfio-pci", 45)
    add_pci_device(sb, GPU_AUDIO, "10de", "1aef", "040300", "vfio-pci", 45)
    (sb.root / "sys/module/vfio").mkdir(parents=True, exist_ok=True)
    sb.fake("lspci", out=LSPCI_OK)
    sb.fake("lsmod", out=LSMOD_HOST_OK)
    sb.write("etc/udev/rules.d/99-vfio.rules", 'SUBSYSTEM=="vfio", GROUP="kvm", MODE="0660"\n')
    sb.write("var/lib/one/remotes/etc/im/kvm-probes.d/pci.conf", PCI_CONF_OK)
    return sb
