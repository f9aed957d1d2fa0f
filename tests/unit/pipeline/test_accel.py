"""The accelerator probe trusts a boot, not /dev/kvm; it falls back to TCG and says why."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance_build.vm import accel


def fake_qemu(tmp_path: Path, body: str) -> str:
    path = tmp_path / "qemu-system-x86_64"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"not really a kernel")
    return k


@pytest.fixture(autouse=True)
def busybox_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF fake")
    real_which = accel.shutil.which
    monkeypatch.setattr(accel.shutil, "which", lambda name: str(bb) if name == "busybox" else real_which(name))


def test_guest_that_prints_means_kvm(tmp_path: Path, kernel: Path) -> None:
    qemu = fake_qemu(tmp_path, f'echo "Linux booting"; echo {accel.MARKER}; exit 0\n')
    ok, why = accel.kvm_boots(kernel, qemu=qemu, timeout=10)
    assert ok and "booted under KVM" in why


def test_qemu_abort_means_tcg(tmp_path: Path, kernel: Path) -> None:
    qemu = fake_qemu(tmp_path, 'echo "error: failed to set MSR 0x10a to 0x0" >&2; exit 1\n')
    ok, why = accel.kvm_boots(kernel, qemu=qemu, timeout=10)
    assert not ok
    assert "exit 1" in why and "MSR 0x10a" in why


def test_silent_hang_means_tcg(tmp_path: Path, kernel: Path) -> None:
    qemu = fake_qemu(tmp_path, "exec sleep 30\n")
    ok, why = accel.kvm_boots(kernel, qemu=qemu, timeout=1.5)
    assert not ok and "printed nothing within 2 s" in why


def test_choose_falls_back_and_remembers(
    tmp_path: Path, kernel: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLOWER_ACCEL", raising=False)
    monkeypatch.setattr(accel.os, "access", lambda path, mode: True)
    qemu = fake_qemu(tmp_path, 'case "$1" in --version) echo "QEMU emulator version 9";; *) exit 1;; esac\n')
    chosen = accel.choose(kernel, qemu=qemu, timeout=5)
    assert chosen.name == "tcg" and chosen.qemu_args()[:2] == ["-accel", "tcg,thread=multi"]
    assert "TCG" in capsys.readouterr().out
    # a second call reuses the result for this host boot without booting again
    broken = fake_qemu(
        tmp_path,
        'case "$1" in --version) echo "QEMU emulator version 9";; *) echo BOOTED >> '
        + str(tmp_path / "ran")
        + "; exit 1;; esac\n",
    )
    again = accel.choose(kernel, qemu=broken, timeout=5)
    assert again == chosen and not (tmp_path / "ran").exists()
    assert "remembered" in capsys.readouterr().out


def test_no_dev_kvm_is_tcg_without_booting(tmp_path: Path, kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_ACCEL", raising=False)
    monkeypatch.setattr(accel.os, "access", lambda path, mode: False)
    chosen = accel.choose(kernel, qemu=fake_qemu(tmp_path, "exit 99\n"))
    assert chosen.name == "tcg" and "/dev/kvm" in chosen.reason


def test_kvm_choice_uses_cpu_host(tmp_path: Path, kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_ACCEL", raising=False)
    monkeypatch.setattr(accel.os, "access", lambda path, mode: True)
    qemu = fake_qemu(tmp_path, f'case "$1" in --version) echo v;; *) echo {accel.MARKER};; esac\n')
    chosen = accel.choose(kernel, qemu=qemu, timeout=5)
    assert chosen.name == "kvm" and chosen.qemu_args() == ["-accel", "kvm", "-cpu", "host"]


@pytest.mark.parametrize(("value", "name"), [("tcg", "tcg"), ("kvm", "kvm")])
def test_forced(value: str, name: str, kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_ACCEL", value)
    assert accel.choose(kernel).name == name


def test_probe_initramfs_is_a_valid_cpio(tmp_path: Path) -> None:
    import gzip
    import subprocess

    bb = tmp_path / "bb"
    bb.write_bytes(b"binary")
    out = tmp_path / "initrd.gz"
    accel._probe_initramfs(out, bb)
    listing = subprocess.run(["cpio", "-it"], input=gzip.decompress(out.read_bytes()), capture_output=True, check=True)
    names = set(listing.stdout.decode().split())
    assert {"init", "bin", "bin/busybox"} <= names
    assert os.path.getsize(out) > 0
