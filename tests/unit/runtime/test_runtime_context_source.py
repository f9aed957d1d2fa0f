"""Finding the context: mounted copy, CONTEXT CD via (fake) mount, override file, token."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_testlib import FakeBin, FakeRoot

from supernode_runtime.context import ContextError, load_context
from supernode_runtime.context_parser import format_context


def make_fake_cd(fake_root: FakeRoot, values: dict[str, str], token: str = "cd-token") -> Path:
    """The CONTEXT 'device' is a directory here; the fake mount copies it."""
    device = fake_root.paths.context_device
    device.mkdir(parents=True)
    (device / "context.sh").write_text(format_context(values))
    (device / "token.txt").write_text(token)
    return device


def add_fake_mount(fake_bin: FakeBin, fail: bool = False) -> None:
    if fail:
        fake_bin.add("mount", '/bin/echo "mount: wrong fs type" >&2\nexit 32')
    else:
        # mount -o ro DEVICE DIR  -> copy the fake device directory
        fake_bin.add("mount", '/bin/cp -r "$3"/. "$4"/')
    fake_bin.add("umount", '/bin/rm -rf "$1"/*')


def test_premounted_context_is_read(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({"VMID": "7", "FL_LOG_LEVEL": "DEBUG"}, token="abc")
    ctx = load_context(fake_root.paths)
    assert ctx.raw("VMID") == "7"
    assert ctx.token == "abc"
    assert ctx.origin == str(fake_root.context_dir)
    assert fake_bin.calls() == []  # nothing mounted


def test_context_cd_is_mounted_read_only_and_unmounted(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    device = make_fake_cd(fake_root, {"VMID": "9", "ONEAPP_FL_GPU_ENABLED": "YES"})
    add_fake_mount(fake_bin)
    ctx = load_context(fake_root.paths)
    assert ctx.raw("ONEAPP_FL_GPU_ENABLED") == "YES"
    assert ctx.token == "cd-token"
    calls = fake_bin.calls()
    assert calls[0].startswith(f"mount -o ro {device} ")
    mount_dir = calls[0].split()[-1]
    assert calls[1] == f"umount {mount_dir}"
    assert not Path(mount_dir).exists()  # temp mount point removed


def test_mount_failure_is_a_context_error(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    make_fake_cd(fake_root, {"VMID": "9"})
    add_fake_mount(fake_bin, fail=True)
    with pytest.raises(ContextError, match="wrong fs type"):
        load_context(fake_root.paths)
    assert list(fake_root.paths.run_dir.iterdir()) == []  # no leftover mount dir


def test_no_context_at_all_is_empty(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    ctx = load_context(fake_root.paths)
    assert ctx.layers == []
    assert ctx.token is None
    assert "not present" in ctx.notes[0]


def test_override_file_values_win(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({"FL_LOG_LEVEL": "DEBUG", "VMID": "1"})
    fake_root.write_override({"FL_LOG_LEVEL": "ERROR"})
    ctx = load_context(fake_root.paths)
    assert ctx.raw("FL_LOG_LEVEL") == "ERROR"
    assert ctx.raw("VMID") == "1"


def test_override_only_platform(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_override({"FL_SUPERLINK_ADDRESS": "10.1.1.1"})
    ctx = load_context(fake_root.paths)
    assert ctx.cd is None
    assert ctx.raw("FL_SUPERLINK_ADDRESS") == "10.1.1.1"


def test_parse_warnings_carry_the_file(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({}, raw_text="A='1'\nnonsense\n")
    ctx = load_context(fake_root.paths)
    assert ctx.warnings == [f"{fake_root.context_dir}/context.sh: line 2: not a KEY='value' statement (no '=')"]
    assert ctx.errors == []


def test_invalid_utf8_line_is_reported_and_an_error_when_fl_like(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    path = fake_root.write_context({})
    path.write_bytes(b"A='\xff'\nFL_TLS_ENABLED='YES\xfe'\n")
    ctx = load_context(fake_root.paths)
    assert [w.split(": ", 1)[1] for w in ctx.warnings] == ["line 1: is not valid UTF-8"]
    assert [e.split(": ", 1)[1] for e in ctx.errors] == ["line 2: is not valid UTF-8"]
