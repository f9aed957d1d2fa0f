"""The VM launcher's QEMU command line, checked without running QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance_build.errors import BuildError
from appliance_build.vm.accel import Accelerator
from appliance_build.vm.launcher import VmSpec, qemu_argv

TCG = Accelerator("tcg", "max", "test")


def argv_for(spec: VmSpec, tmp_path: Path, **kw: object) -> list[str]:
    return qemu_argv(
        spec,
        overlay=tmp_path / "o.qcow2",
        ssh_port=2222,
        serial_log=tmp_path / "serial.log",
        qmp_socket=tmp_path / "qmp.sock",
        uefi_vars=kw.get("vars", tmp_path / "VARS.fd"),  # type: ignore[arg-type]
        uefi_code=kw.get("code", Path("/fw/CODE.fd")),
        forwards={8080: 40000},  # type: ignore[arg-type]
    )


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_bios_boot(tmp_path: Path) -> None:
    argv = argv_for(VmSpec(Path("img.qcow2"), firmware="bios", machine="pc", accel=TCG), tmp_path)
    assert pairs(argv, "-machine") == ["pc"]
    assert not any("pflash" in d for d in pairs(argv, "-drive"))
    assert f"file={tmp_path / 'o.qcow2'},format=qcow2,if=virtio,discard=unmap" in pairs(argv, "-drive")
    assert pairs(argv, "-serial") == [f"file:{tmp_path / 'serial.log'}"]
    assert pairs(argv, "-qmp") == [f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"]
    (netdev,) = pairs(argv, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev and "hostfwd=tcp:127.0.0.1:40000-:8080" in netdev
    assert pairs(argv, "-accel") == ["tcg,thread=multi"] and pairs(argv, "-cpu") == ["max"]
    assert not pairs(argv, "-device") or all("vfio" not in d for d in pairs(argv, "-device"))


def test_uefi_uses_a_per_run_vars_copy(tmp_path: Path) -> None:
    argv = argv_for(VmSpec(Path("img.qcow2"), firmware="uefi", accel=TCG), tmp_path)
    drives = pairs(argv, "-drive")
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd" in drives
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'VARS.fd'}" in drives


def test_uefi_without_firmware_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="UEFI boot needs"):
        argv_for(VmSpec(Path("img.qcow2"), firmware="uefi", accel=TCG), tmp_path, code=None)


def test_vfio_forces_uefi_q35_and_cpu_host(tmp_path: Path) -> None:
    spec = VmSpec(Path("img.qcow2"), firmware="bios", machine="pc", accel=TCG, vfio=("0000:e1:00.0", "0000:e1:00.1"))
    argv = argv_for(spec, tmp_path)
    assert pairs(argv, "-machine") == ["q35"]
    assert pairs(argv, "-accel") == ["kvm"] and pairs(argv, "-cpu") == ["host"]
    assert any("pflash" in d for d in pairs(argv, "-drive"))
    assert [d for d in pairs(argv, "-device") if d.startswith("vfio-pci")] == [
        "vfio-pci,host=0000:e1:00.0",
        "vfio-pci,host=0000:e1:00.1",
    ]


def test_cdroms_are_read_only(tmp_path: Path) -> None:
    spec = VmSpec(Path("img.qcow2"), accel=TCG, cdroms=(Path("/x/context.iso"),))
    assert "file=/x/context.iso,media=cdrom,readonly=on,if=ide,index=0" in pairs(argv_for(spec, tmp_path), "-drive")


def test_context_iso_holds_context_sh_and_token(tmp_path: Path) -> None:
    import subprocess

    from appliance_build.vm.isos import context_iso
    from supernode_runtime.context_parser import parse_context

    values = {"A": "plain", "B": "it's", "C": "two\nlines", "D": "", "E": '$(echo no) `x` ; "q"'}
    iso = context_iso(tmp_path / "c.iso", values, token="tok123")
    label = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True, text=True).stdout
    assert "Volume Id    : CONTEXT" in label
    extracted = tmp_path / "x"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(extracted)],
        capture_output=True,
        check=True,
    )
    assert (extracted / "token.txt").read_text() == "tok123"
    assert parse_context((extracted / "context.sh").read_text()).values == values
