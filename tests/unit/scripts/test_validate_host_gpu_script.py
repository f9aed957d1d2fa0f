"""scripts/validate-host-gpu.sh (runs on the OpenNebula KVM host) against a fake root tree."""

from __future__ import annotations

import json
import re

import pytest
from gpu_scripts_support import (
    GPU,
    GPU_AUDIO,
    INTEL_NIC,
    LSPCI_OK,
    PCI_CONF_DEFAULT,
    TS,
    VALIDATE_HOST_GPU,
    Result,
    Sandbox,
    add_pci_device,
    set_driver,
)

PCI_CONF = "var/lib/one/remotes/etc/im/kvm-probes.d/pci.conf"
RESULT_RE = re.compile(r"^RESULT: errors=(\d+) warnings=(\d+)$")


def counts(r: Result) -> tuple[int, int]:
    m = RESULT_RE.match(r.lines[-1])
    assert m, r.stdout
    return int(m.group(1)), int(m.group(2))


def by_check(r: Result, level: str, check: str) -> list[str]:
    prefix = f"{check}: "
    return [line[len(prefix) :] for line in r.level_lines(level) if line.startswith(prefix)]


def assert_single(r: Result, level: str, check: str, rc: int) -> str:
    """Exactly one non-OK finding (of `level` for `check`); returns its message."""
    assert r.returncode == rc, r.stdout + r.stderr
    errors, warnings = counts(r)
    assert (errors, warnings) == ((1, 0) if level == "ERROR" else (0, 1)), r.stdout
    msgs = by_check(r, level, check)
    assert len(msgs) == 1, r.stdout
    return msgs[0]


# --------------------------------------------------------------------------------- all good
def test_all_checks_ok(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 0, r.stdout + r.stderr
    assert counts(r) == (0, 0)
    checks = [line.split(":")[0] for line in r.level_lines("OK")]
    assert checks == [
        "iommu_cmdline",
        "iommu_groups",
        "vfio_module",
        "gpu_binding",
        "gpu_binding",
        "vfio_udev",
        "one_pci_filter",
    ]
    assert r.fixes == []
    assert "Host GPU passthrough validation PASSED: all checks successful" in r.lines[-2]
    assert all(re.match(rf"^{TS} ", line) for line in r.lines[:-1] if line)


def test_host_root_env_equivalent_to_option(host: Sandbox) -> None:
    host.env_extra["HOST_ROOT"] = str(host.root)
    r = host.run(VALIDATE_HOST_GPU, root=False)
    assert r.returncode == 0, r.stdout
    assert counts(r) == (0, 0)


def test_no_set_e_all_checks_run_and_counts(host: Sandbox) -> None:
    host.write("proc/cmdline", "ro quiet splash\n")  # error
    for group in (host.root / "sys/kernel/iommu_groups").iterdir():  # error
        for dev in (group / "devices").iterdir():
            dev.unlink()
        (group / "devices").rmdir()
        group.rmdir()
    host.fake("lsmod", out="Module Size Used by\n")  # warning
    set_driver(host, GPU, "nvidia")  # error
    set_driver(host, GPU_AUDIO, None)  # warning
    host.remove("etc/udev/rules.d/99-vfio.rules")  # warning
    host.remove(PCI_CONF)  # warning
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 1
    assert counts(r) == (3, 4)
    assert "Host GPU passthrough validation FAILED: 3 error(s), 4 warning(s)" in r.lines[-2]
    assert len(r.fixes) == 7


def test_warnings_only_exit_0(host: Sandbox) -> None:
    host.fake("lsmod", out="Module Size Used by\n")
    host.remove("etc/udev/rules.d/99-vfio.rules")
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 0
    assert counts(r) == (0, 2)
    assert "PASSED with WARNINGS: 2 warning(s)" in r.lines[-2]


# ------------------------------------------------------------------ check 1: iommu cmdline
@pytest.mark.parametrize(
    "param",
    [
        "intel_iommu=on",
        "amd_iommu=on",
        "iommu=on",
        "intel_iommu=on,sm_on",
        "intel_iommu=igfx_off,on",
    ],
)
def test_check1_accepts(host: Sandbox, param: str) -> None:
    host.write("proc/cmdline", f"BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro {param}\n")
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 0, r.stdout
    assert by_check(r, "OK", "iommu_cmdline") == [f"IOMMU enabled in kernel parameters ({param})"]


@pytest.mark.parametrize(
    "cmdline", ["ro quiet splash", "ro intel_iommu=off", "ro iommu=pt", "ro nointel_iommu=on_x", ""]
)
def test_check1_error(host: Sandbox, cmdline: str) -> None:
    host.write("proc/cmdline", cmdline + "\n")
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "ERROR", "iommu_cmdline", 1)
    assert len(r.fixes) == 1
    fix = r.fixes[0]
    assert "GRUB_CMDLINE_LINUX_DEFAULT" in fix and "intel_iommu=on iommu=pt" in fix
    assert "update-grub" in fix
    assert any("amd_iommu=on" in n for n in r.notes)


def test_check1_amd_fix_mentions_default_on(host: Sandbox) -> None:
    host.write("proc/cmdline", "ro quiet\n")
    host.write("proc/cpuinfo", "processor\t: 0\nvendor_id\t: AuthenticAMD\n")
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "ERROR", "iommu_cmdline", 1)
    assert "amd_iommu=on iommu=pt" in r.fixes[0] and "update-grub" in r.fixes[0]
    assert any("by default" in n for n in r.notes)


def test_check1_missing_proc_cmdline(host: Sandbox) -> None:
    host.remove("proc/cmdline")
    r = host.run(VALIDATE_HOST_GPU)
    assert "cannot read" in assert_single(r, "ERROR", "iommu_cmdline", 1)


# ------------------------------------------------------------------- check 2: iommu groups
def test_check2_counts_groups(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU)
    n = len(list((host.root / "sys/kernel/iommu_groups").iterdir()))
    assert by_check(r, "OK", "iommu_groups") == [f"{n} IOMMU group(s) found"]


def test_check2_error_when_empty(host: Sandbox) -> None:
    groups = host.root / "sys/kernel/iommu_groups"
    groups.rename(host.tmp / "groups-away")
    groups.mkdir()
    r = host.run(VALIDATE_HOST_GPU)
    assert "no IOMMU groups" in assert_single(r, "ERROR", "iommu_groups", 1)
    assert any("BIOS" in f for f in r.fixes)


def test_check2_error_when_missing(host: Sandbox) -> None:
    (host.root / "sys/kernel/iommu_groups").rename(host.tmp / "groups-away")
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "ERROR", "iommu_groups", 1)


# ---------------------------------------------------------------------- check 3: vfio-pci
VFIO_FIX = "echo vfio-pci > /etc/modules-load.d/vfio-pci.conf && modprobe vfio-pci"


def test_check3_warning_when_not_loaded(host: Sandbox) -> None:
    host.fake("lsmod", out="Module Size Used by\nkvm_intel 1 0\n")
    r = host.run(VALIDATE_HOST_GPU)
    assert "not loaded" in assert_single(r, "WARNING", "vfio_module", 0)
    assert r.fixes == [VFIO_FIX]


def test_check3_exact_module_name(host: Sandbox) -> None:
    host.fake("lsmod", out="Module Size Used by\nvfio_pci_core 1 0\nvfio 1 1\n")
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "WARNING", "vfio_module", 0)


def test_check3_builtin_module_ok(host: Sandbox) -> None:
    host.fake("lsmod", out="Module Size Used by\n")
    (host.root / "sys/module/vfio_pci").mkdir(parents=True)
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 0
    assert counts(r) == (0, 0)
    assert "built into the kernel" in by_check(r, "OK", "vfio_module")[0]


# -------------------------------------------------------------------- check 4: GPU binding
def test_check4_includes_audio_function(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU)
    oks = by_check(r, "OK", "gpu_binding")
    assert [m.split()[0] for m in oks] == [GPU, GPU_AUDIO]
    assert all("[IOMMU group 45]" in m and "bound to vfio-pci" in m for m in oks)
    assert not any(INTEL_NIC in line for line in r.lines)


@pytest.mark.parametrize("driver", ["nvidia", "nouveau"])
def test_check4_error_when_bound_to_host_driver(host: Sandbox, driver: str) -> None:
    set_driver(host, GPU, driver)
    r = host.run(VALIDATE_HOST_GPU)
    msg = assert_single(r, "ERROR", "gpu_binding", 1)
    assert msg.startswith(GPU) and f"bound to {driver} (should be vfio-pci)" in msg
    assert r.fixes == [f"driverctl set-override {GPU} vfio-pci"]


def test_check4_error_when_audio_on_snd_hda_intel(host: Sandbox) -> None:
    set_driver(host, GPU_AUDIO, "snd_hda_intel")
    r = host.run(VALIDATE_HOST_GPU)
    assert "bound to snd_hda_intel" in assert_single(r, "ERROR", "gpu_binding", 1)
    assert r.fixes == [f"driverctl set-override {GPU_AUDIO} vfio-pci"]


def test_check4_warning_when_no_driver(host: Sandbox) -> None:
    set_driver(host, GPU, None)
    r = host.run(VALIDATE_HOST_GPU)
    assert "no driver bound" in assert_single(r, "WARNING", "gpu_binding", 0)
    assert r.fixes == [f"driverctl set-override {GPU} vfio-pci"]


def test_check4_warning_when_no_nvidia_device(host: Sandbox) -> None:
    host.fake("lspci", out=LSPCI_OK.splitlines()[0] + "\n")
    r = host.run(VALIDATE_HOST_GPU)
    assert "no NVIDIA" in assert_single(r, "WARNING", "gpu_binding", 0)
    assert len(r.fixes) == 1 and "lspci" in r.fixes[0]


def test_check4_lspci_k_fallback_without_sysfs(host: Sandbox) -> None:
    # Devices listed by lspci but absent from sys/bus/pci/devices: driver from `lspci -k -s`.
    for addr in (GPU, GPU_AUDIO):
        p = host.root / "sys/bus/pci/devices" / addr
        for child in p.iterdir():
            child.unlink()
        p.rmdir()
    host.fake(
        "lspci",
        f"k_{GPU}",
        out=(
            f"{GPU[5:]} VGA compatible controller: NVIDIA Corporation GA102\n"
            "\tSubsystem: NVIDIA Corporation Device 147d\n"
            "\tKernel driver in use: nvidia\n"
            "\tKernel modules: nvidiafb, nouveau, nvidia_drm, nvidia\n"
        ),
    )
    host.fake(
        "lspci",
        f"k_{GPU_AUDIO}",
        out=(
            f"{GPU_AUDIO[5:]} Audio device: NVIDIA Corporation GA102 High Definition Audio\n"
            "\tKernel driver in use: vfio-pci\n"
        ),
    )
    r = host.run(VALIDATE_HOST_GPU)
    assert "bound to nvidia" in assert_single(r, "ERROR", "gpu_binding", 1)
    assert len(by_check(r, "OK", "gpu_binding")) == 1
    assert f"-k -s {GPU}" in host.calls("lspci")


def test_check4_sysfs_enumeration_without_lspci(host: Sandbox) -> None:
    host.remove_tool("lspci")
    set_driver(host, GPU, "nvidia")
    r = host.run(VALIDATE_HOST_GPU, path=host.path_without("lspci"))
    msg = assert_single(r, "ERROR", "gpu_binding", 1)
    assert msg.startswith(GPU) and "[10de:2204]" in msg
    assert [m.split()[0] for m in by_check(r, "OK", "gpu_binding")] == [GPU_AUDIO]


def test_check4_multiple_gpus(host: Sandbox) -> None:
    second = "0000:41:00.0"
    add_pci_device(host, second, "10de", "20b5", "030200", "nvidia", 30)
    host.fake(
        "lspci",
        out=LSPCI_OK
        + (f"{second} 3D controller [0302]: NVIDIA Corporation GA100 [A100 PCIe 80GB] [10de:20b5] (rev a1)\n"),
    )
    r = host.run(VALIDATE_HOST_GPU)
    msg = assert_single(r, "ERROR", "gpu_binding", 1)
    assert msg.startswith(second) and "[IOMMU group 30]" in msg
    assert len(by_check(r, "OK", "gpu_binding")) == 2


# --------------------------------------------------------------------- --devices (check 4)
def test_devices_only_named_are_checked(host: Sandbox) -> None:
    other = "0000:41:00.0"
    add_pci_device(host, other, "10de", "20b5", "030200", "nvidia", 30)
    host.fake("lspci", out=LSPCI_OK + f"{other} 3D controller [0302]: NVIDIA [10de:20b5]\n")
    r = host.run(VALIDATE_HOST_GPU, "--devices", f"{GPU},{GPU_AUDIO}")
    assert r.returncode == 0, r.stdout
    assert counts(r) == (0, 0)
    assert [m.split()[0] for m in by_check(r, "OK", "gpu_binding")] == [GPU, GPU_AUDIO]
    assert other not in r.stdout


def test_devices_short_form_and_case(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU, "--devices", "E1:00.0, e1:00.1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [m.split()[0] for m in by_check(r, "OK", "gpu_binding")] == [GPU, GPU_AUDIO]


def test_devices_missing_device_is_error(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU, "--devices", f"{GPU},0000:c1:00.0")
    msg = assert_single(r, "ERROR", "gpu_binding", 1)
    assert msg.startswith("0000:c1:00.0") and "no such PCI device" in msg


def test_devices_no_driver_is_error_not_warning(host: Sandbox) -> None:
    set_driver(host, GPU_AUDIO, None)
    r = host.run(VALIDATE_HOST_GPU, f"--devices={GPU},{GPU_AUDIO}")
    assert "no driver bound" in assert_single(r, "ERROR", "gpu_binding", 1)
    assert r.fixes == [f"driverctl set-override {GPU_AUDIO} vfio-pci"]


def test_devices_other_driver_is_error(host: Sandbox) -> None:
    set_driver(host, GPU, "nvidia")
    r = host.run(VALIDATE_HOST_GPU, "--devices", GPU)
    assert "bound to nvidia" in assert_single(r, "ERROR", "gpu_binding", 1)


def test_devices_non_nvidia_device_checked_too(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU, "--devices", INTEL_NIC)
    assert "bound to e1000e" in assert_single(r, "ERROR", "gpu_binding", 1)


@pytest.mark.parametrize("value", ["", ",", "0000:e1:00", "e1:00.8", "gpu0", "0000:zz:00.0"])
def test_devices_invalid_is_usage_error(host: Sandbox, value: str) -> None:
    r = host.run(VALIDATE_HOST_GPU, "--devices", value)
    assert r.returncode == 2
    assert "--devices" in r.stderr
    assert r.stdout == ""


# ------------------------------------------------------------------------ check 5: udev rule
def test_check5_warning_when_missing(host: Sandbox) -> None:
    host.remove("etc/udev/rules.d/99-vfio.rules")
    host.write("etc/udev/rules.d/70-other.rules", 'SUBSYSTEM=="net", ACTION=="add"\n')
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "WARNING", "vfio_udev", 0)
    assert r.fixes == [
        'echo \'SUBSYSTEM=="vfio", GROUP="kvm", MODE="0660"\' > /etc/udev/rules.d/99-vfio.rules'
        " && udevadm control --reload && udevadm trigger"
    ]
    assert any("world-writable" in n for n in r.notes)


def test_check5_commented_rule_does_not_count(host: Sandbox) -> None:
    host.write("etc/udev/rules.d/99-vfio.rules", '# SUBSYSTEM=="vfio", GROUP="kvm"\n')
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "WARNING", "vfio_udev", 0)


def test_check5_only_rules_files_count(host: Sandbox) -> None:
    host.remove("etc/udev/rules.d/99-vfio.rules")
    host.write("etc/udev/rules.d/99-vfio.rules.bak", 'SUBSYSTEM=="vfio", GROUP="kvm"\n')
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "WARNING", "vfio_udev", 0)


def test_check5_world_writable_rule_ok_with_note(host: Sandbox) -> None:
    host.write("etc/udev/rules.d/99-vfio.rules", 'SUBSYSTEM=="vfio", GROUP="kvm", MODE="0666"\n')
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 0 and counts(r) == (0, 0)
    assert by_check(r, "OK", "vfio_udev")
    assert any("0666" in n and 'MODE="0660"' in n for n in r.notes)


# ------------------------------------------------------------------- check 6: pci.conf filter
def test_check6_warning_when_missing(host: Sandbox) -> None:
    host.remove(PCI_CONF)
    r = host.run(VALIDATE_HOST_GPU)
    assert "not found" in assert_single(r, "WARNING", "one_pci_filter", 0)
    assert len(r.fixes) == 1
    assert ":filter: '10de:*'" in r.fixes[0] and "onehost sync -f" in r.fixes[0]


def test_check6_stock_file_with_10de_only_in_comments(host: Sandbox) -> None:
    # The stock pci.conf mentions '10de:*' in comments; a plain grep would accept it.
    host.write(PCI_CONF, PCI_CONF_DEFAULT)
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "WARNING", "one_pci_filter", 0)
    assert "onehost sync -f" in r.fixes[0]


@pytest.mark.parametrize(
    "conf",
    [
        ":filter: '10de:*'\n",
        ":filter: '10DE:*'\n",
        ":filter: '10de:*,8086::0c03'\n",
        ":filter:\n  - '8086::0c03'\n  - '10de:20b5'   # A100\n:short_address: []\n",
        ":filter: '*:*'\n",
    ],
)
def test_check6_ok(host: Sandbox, conf: str) -> None:
    host.write(PCI_CONF, "# comment\n" + conf)
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 0 and counts(r) == (0, 0), r.stdout
    assert by_check(r, "OK", "one_pci_filter")


@pytest.mark.parametrize(
    "conf",
    [
        ":filter: '0:0'\n",
        ":filter: '8086::0c03'\n:short_address: ['10de:0000']\n",
        ":filter:\n  - '8086::0c03'\n:device_name: ['10de:*']\n",
    ],
)
def test_check6_warning_when_filter_lacks_nvidia(host: Sandbox, conf: str) -> None:
    host.write(PCI_CONF, conf)
    r = host.run(VALIDATE_HOST_GPU)
    assert_single(r, "WARNING", "one_pci_filter", 0)


def test_check6_synced_copy_on_kvm_node(host: Sandbox) -> None:
    host.remove(PCI_CONF)
    host.write("var/tmp/one/etc/im/kvm-probes.d/pci.conf", ":filter: '10de:*'\n")
    r = host.run(VALIDATE_HOST_GPU)
    assert r.returncode == 0 and counts(r) == (0, 0)
    assert "var/tmp/one" in by_check(r, "OK", "one_pci_filter")[0]


# ------------------------------------------------------------------------------------ --json
def test_json_summary(host: Sandbox) -> None:
    set_driver(host, GPU, "nvidia")
    host.remove("etc/udev/rules.d/99-vfio.rules")
    r = host.run(VALIDATE_HOST_GPU, "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["result"] == "failed"
    assert (doc["errors"], doc["warnings"]) == (1, 1)
    levels = {(f["check"], f["level"]) for f in doc["findings"]}
    assert ("gpu_binding", "error") in levels and ("vfio_udev", "warning") in levels
    err = next(f for f in doc["findings"] if f["level"] == "error")
    assert err == {
        **err,
        "device": GPU,
        "driver": "nvidia",
        "fix": f"driverctl set-override {GPU} vfio-pci",
    }
    udev = next(f for f in doc["findings"] if f["check"] == "vfio_udev")
    assert 'SUBSYSTEM=="vfio"' in udev["fix"]  # quotes survive JSON escaping
    # the human-readable report went to stderr
    assert "RESULT: errors=1 warnings=1" in r.stderr


def test_json_all_ok(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU, "--json", "--devices", GPU)
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["result"] == "passed" and doc["errors"] == 0 and doc["warnings"] == 0
    assert all(f["level"] == "ok" and f["fix"] is None for f in doc["findings"])
    assert [f["device"] for f in doc["findings"] if f["check"] == "gpu_binding"] == [GPU]


def test_json_passed_with_warnings(host: Sandbox) -> None:
    host.remove(PCI_CONF)
    doc = json.loads(host.run(VALIDATE_HOST_GPU, "--json").stdout)
    assert doc["result"] == "passed_with_warnings" and doc["warnings"] == 1


# -------------------------------------------------------------------------------------- CLI
def test_help(host: Sandbox) -> None:
    r = host.run(VALIDATE_HOST_GPU, "-h", root=False)
    assert r.returncode == 0
    for opt in ("Usage: validate-host-gpu.sh", "--root", "--devices", "--json", "HOST_ROOT"):
        assert opt in r.stdout
    assert host.calls("lspci") == []


@pytest.mark.parametrize("args", [("--bogus",), ("--root",), ("--root", "/nonexistent/dir"), ("--devices",)])
def test_usage_errors_exit_2(host: Sandbox, args: tuple[str, ...]) -> None:
    r = host.run(VALIDATE_HOST_GPU, *args, root=False)
    assert r.returncode == 2
    assert "validate-host-gpu.sh:" in r.stderr
