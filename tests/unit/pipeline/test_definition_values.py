"""Strict image definitions: every string value is exactly what its key says it is.

The hostile values of issue 12 (each accepted before, and each reaching mmdebstrap's
command line, apt's sources, the Packer HCL or Docker's command line) are refused with the
file, the key, the value and what is accepted; lists of good and bad values pin each
pattern down; and the extra-packages hook of the debian-12 base is run for real (with a
fake chroot) to show a package list is data, never shell text.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance_build import config
from appliance_build.errors import BuildError, ConfigError
from appliance_build.stages.base import debian

VALID = """
description = "test image"
variant = "cpu"
provision = ["10-docker-engine.sh", "90-cleanup.sh"]
[base]
provider = "debian-12"
[flower]
version = "1.41.0"
lock = "locks/flwr-1.41.0.txt"
"""
GPU_TABLE = "[gpu]\n"


def with_key(table: str, line: str, text: str = VALID) -> str:
    """`text` with `line` added at the top of [table] ("" for the top level)."""
    if not table:
        return line + "\n" + text
    if f"[{table}]\n" in text:
        return text.replace(f"[{table}]\n", f"[{table}]\n{line}\n", 1)
    return text + f"[{table}]\n{line}\n"


def load_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "img.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load("img", tmp_path)
    return str(err.value)


def loads(tmp_path: Path, text: str) -> config.ImageConfig:
    (tmp_path / "img.toml").write_text(text)
    return config.load("img", tmp_path)


# The exact examples of issue 12, each accepted before this change.
ISSUE_EXAMPLES = [
    ("base", 'extra_packages = ["jq; touch /tmp/pwned"]', "base.extra_packages[0]", "jq; touch /tmp/pwned"),
    ("base", 'extra_packages = ["jq; ..."]', "base.extra_packages[0]", "jq; ..."),
    ("base", 'kernel = "linux-image-amd64$(touch /tmp/pwned)"', "base.kernel", "linux-image-amd64$(touch /tmp/pwned)"),
    ("base", 'components = ["main", "contrib;id"]', "base.components[1]", "contrib;id"),
    (
        "base",
        'mirror = "http://deb.debian.org/debian bookworm main"',
        "base.mirror",
        "http://deb.debian.org/debian bookworm main",
    ),
    (
        "",
        'description = "x\\nvariable \\"evil\\" { default = 1 }"',
        "description",
        'x\nvariable "evil" { default = 1 }',
    ),
    ("vm", 'ssh_timeout = "30m\\"\\n  ssh_password = \\"x"', "vm.ssh_timeout", '30m"\n  ssh_password = "x'),
    ("vm", 'ssh_timeout = "30m\\""', "vm.ssh_timeout", '30m"'),
    ("flower", 'registry_image = "--privileged"', "flower.registry_image", "--privileged"),
    ("flower", 'local_tag = "flwr supernode:1.41.0"', "flower.local_tag", "flwr supernode:1.41.0"),
    ("base", 'root_size = "0M"', "base.root_size", "0M"),
]


@pytest.mark.parametrize(("table", "line", "key", "value"), ISSUE_EXAMPLES)
def test_issue_examples_are_refused(tmp_path: Path, table: str, line: str, key: str, value: str) -> None:
    text = VALID.replace('description = "test image"\n', "") if key == "description" else VALID
    message = load_error(tmp_path, with_key(table, line, text))
    assert message.startswith(f"{tmp_path / 'img.toml'}: key '{key}': ")
    assert repr(value) in message
    assert "must" in message or "not a" in message or "too small" in message  # says what is accepted


def test_lock_outside_images_locks_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, VALID.replace("locks/flwr-1.41.0.txt", "../pyproject.toml"))
    assert "key 'flower.lock'" in message and "'../pyproject.toml'" in message and "images/locks/" in message


@pytest.mark.parametrize(
    "lock", ["/etc/passwd", "locks/../../pyproject.toml", "locks/sub/flwr-1.41.0.txt", "locks/.txt"]
)
def test_lock_paths_that_leave_locks(tmp_path: Path, lock: str) -> None:
    assert "key 'flower.lock'" in load_error(tmp_path, VALID.replace("locks/flwr-1.41.0.txt", lock))


def test_flower_version_must_match_its_lock(tmp_path: Path) -> None:
    message = load_error(tmp_path, VALID.replace('"1.41.0"', '"1.40.0"'))
    assert "key 'flower.version'" in message and "'1.40.0'" in message and "flwr==1.41.0" in message


def fake_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    images = tmp_path / "images"
    (images / "locks").mkdir(parents=True)
    monkeypatch.setattr(config, "IMAGES_DIR", images)
    return images


def test_lock_named_for_another_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = fake_images(tmp_path, monkeypatch)
    (images / "locks" / "flwr-1.40.0.txt").write_text("flwr==1.41.0 \\\n    --hash=sha256:00\n")
    message = load_error(images, VALID.replace("flwr-1.41.0.txt", "flwr-1.40.0.txt"))
    assert "key 'flower.lock'" in message and "locks/flwr-1.41.0.txt" in message


def test_lock_must_pin_flwr_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = fake_images(tmp_path, monkeypatch)
    (images / "locks" / "flwr-1.41.0.txt").write_text("grpcio==1.0 \\\n    --hash=sha256:00\n")
    assert "must pin flwr exactly once" in load_error(images, VALID)


def test_lock_symlink_escaping_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = fake_images(tmp_path, monkeypatch)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("flwr==1.41.0\n")
    (images / "locks" / "flwr-1.41.0.txt").symlink_to(outside)
    message = load_error(images, VALID)
    assert "key 'flower.lock'" in message and "outside" in message


def test_lock_with_extras_pin_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = fake_images(tmp_path, monkeypatch)
    (images / "locks" / "flwr-1.41.0.txt").write_text("# pinned\nflwr[simulation]==1.41.0 \\\n    --hash=sha256:00\n")
    assert loads(images, VALID).flower.version == "1.41.0"


# --- each pattern: accepted and refused values -------------------------------------

CASES: list[tuple[str, str, list[str], list[str]]] = [
    # (table, key, accepted, refused); every refused value was accepted before (or crashed)
    (
        "base",
        "kernel",
        ["linux-image-amd64", "linux-image-6.1.0-18-cloud-amd64"],
        ["", "a", "Linux-image", "-linux", "linux image", "linux-image-amd64\n", "linux_image", "linux-image=6.1"],
    ),
    (
        "base",
        "extra_packages",
        ["nvidia-smi", "libstdc++6", "g++", "pciutils=1:3.9.0-4", "nvidia-kernel-dkms=535.183.01-1~deb12u1"],
        [
            "jq; id",
            "-o",
            "--allow-unauthenticated",
            "jq\n",
            "jq ",
            "JQ",
            "jq=",
            "jq=latest",
            "jq/bookworm",
            "jq:amd64",
            "*",
        ],
    ),
    ("base", "components", ["main", "non-free-firmware"], ["main contrib", "Main", "main;id", "1main", ""]),
    (
        "base",
        "mirror",
        ["http://deb.debian.org/debian", "https://mirror.example.org:8080/debian/", "http://10.0.0.1/debian"],
        [
            "ftp://deb.debian.org/debian",
            "deb.debian.org/debian",
            "http://deb.debian.org/debian bookworm",
            "http://deb.debian.org/debian\n",
            "http://user:secret@deb.debian.org/debian",
            "http://deb.debian.org/debian#x",
            "http://deb.debian.org/debian?x=1",
            'http://deb.debian.org/"x',
            "http://deb.debian.org:99999/debian",
            "http://deb.debian.org/%zz",
            "http:///debian",
            "http://-bad-.org/debian",
            "http://deb.debian.org/$(id)",
        ],
    ),
    (
        "base",
        "root_size",
        ["2G", "3G", "3072M", "6G"],
        ["1G", "2047M", "0M", "3g", "3 G", "3GB", "3G\n", "-3G", "9999G"],
    ),
    ("disk", "size", ["8G", "16G", "8192M"], ["3G", "big", "8T", "8G\n"]),
    (
        "vm",
        "ssh_timeout",
        ["30m", "1h", "1h30m", "90s", "1.5h", "5m0s"],
        ["30", "30 m", "-30m", "30m\n", "30mins", "5s", "48h", "1h 30m", '30m"', "${var.x}"],
    ),
    (
        "flower",
        "registry_image",
        [
            "flwr/supernode:1.41.0",
            "docker.io/flwr/supernode:1.41.0",
            "registry.example.org:5000/flwr/supernode:1.41.0-py3.11",
            "flwr/supernode@sha256:" + "a" * 64,
            "localhost:5000/supernode:1.41.0@sha256:" + "0" * 64,
        ],
        [
            "--privileged",
            "-flwr/supernode:1",
            "flwr/supernode",
            "flwr/Supernode:1.41.0",
            "flwr/supernode:-x",
            "flwr/supernode:1.41.0 --privileged",
            "flwr/supernode:1.41.0\n",
            "flwr//supernode:1",
            "flwr/supernode:" + "x" * 129,
            "flwr/supernode@sha256:abc",
            "flwr/supernode:$(id)",
        ],
    ),
    (
        "flower",
        "local_tag",
        ["flwr-supernode:1.41.0", "example.org/flwr/supernode:ci_1"],
        [
            "flwr supernode:1.41.0",
            "flwr-supernode",
            "-flwr:1",
            "flwr-supernode:1.41.0\n",
            "flwr-supernode:.1",
            "flwr-supernode:1@sha256:" + "a" * 64,
            "FLWR:1",
        ],
    ),
]


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _line(key: str, value: str) -> str:
    return f"{key} = [{_toml(value)}]" if key in ("extra_packages", "components") else f"{key} = {_toml(value)}"


def _with(table: str, key: str, value: str) -> str:
    text = VALID
    if table == "disk" or (table == "base" and key == "root_size"):
        size = value if table == "disk" else "16G"
        text = with_key("disk", f"size = {_toml(size)}", text)
        if table == "disk":
            return text
    return with_key(table, _line(key, value), text)


@pytest.mark.parametrize(("table", "key", "value"), [(t, k, v) for t, k, good, _ in CASES for v in good], ids=repr)
def test_accepted_values(tmp_path: Path, table: str, key: str, value: str) -> None:
    image = loads(tmp_path, _with(table, key, value))
    got = getattr(getattr(image, table), key)
    assert got == ((value,) if isinstance(got, tuple) else value)


@pytest.mark.parametrize(("table", "key", "value"), [(t, k, v) for t, k, _, bad in CASES for v in bad], ids=repr)
def test_refused_values(tmp_path: Path, table: str, key: str, value: str) -> None:
    message = load_error(tmp_path, _with(table, key, value))
    suffix = "[0]" if key in ("extra_packages", "components") else ""
    assert f"key '{table}.{key}{suffix}'" in message
    assert repr(value) in message


@pytest.mark.parametrize(
    "value",
    [
        "",
        " lead",
        "trail ",
        "two\nlines",
        "tab\there",
        "bell\x07",
        "\x1b[31mred",
        "line\u2028sep",
        "x" * 201,
        "bom\ufeff",
    ],
    ids=repr,
)
def test_refused_descriptions(tmp_path: Path, value: str) -> None:
    text = VALID.replace('"test image"', _toml(value).replace("\x07", "\\u0007").replace("\x1b", "\\u001b"))
    message = load_error(tmp_path, text)
    assert "key 'description'" in message and repr(value) in message and "one line" in message


def test_description_may_hold_quotes_and_braces(tmp_path: Path) -> None:
    """Printable text is data for the templates' escaping filters (test_render checks those)."""
    value = 'Flower "SuperNode" ${x} %{y} \\ café'
    assert loads(tmp_path, VALID.replace('"test image"', _toml(value))).description == value


def test_version_with_a_trailing_newline(tmp_path: Path) -> None:
    # ^...$ matched "1.41.0\n": the version reaches a `sh -c` check in 30-supernode-container.sh
    assert "key 'flower.version'" in load_error(tmp_path, VALID.replace('"1.41.0"', '"1.41.0\\n"'))


@pytest.mark.parametrize("pkg", ["jq\n", "jq; id", "$(id)", "-y"], ids=repr)
def test_packages_refused(tmp_path: Path, pkg: str) -> None:
    message = load_error(tmp_path, f"packages = [{_toml(pkg)}]\n" + VALID)
    assert "key 'packages[0]'" in message and repr(pkg) in message


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('toolkit_version = "1.17.8-1; id"', "gpu.toolkit_version"),
        ('toolkit_version = "v1.17.8"', "gpu.toolkit_version"),
        ('driver_branch = "535\\n"', "gpu.driver_branch"),
        ('toolkit_source = "mirror"\ntoolkit_mirror = "http://mirror/x y"', "gpu.toolkit_mirror"),
        ('toolkit_repo = "https://nvidia.github.io/x\\n"', "gpu.toolkit_repo"),
        ('toolkit_key_url = "file:///etc/shadow"', "gpu.toolkit_key_url"),
        ('toolkit_source = "local"\ntoolkit_path = "/debs/$(id)"', "gpu.toolkit_path"),
        ('toolkit_source = "local"\ntoolkit_path = "../../debs"', "gpu.toolkit_path"),
    ],
)
def test_refused_gpu_values(tmp_path: Path, line: str, key: str) -> None:
    text = VALID.replace('variant = "cpu"', 'variant = "gpu"') + GPU_TABLE + line + "\n"
    assert f"key '{key}'" in load_error(tmp_path, text)


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ('source = "../outside"\ndest = "/etc/x"', "files[0].source"),
        ('source = "/etc/shadow"\ndest = "/etc/x"', "files[0].source"),
        ('source = "README.md"\ndest = "/etc/../root/x"', "files[0].dest"),
        ('source = "README.md"\ndest = "etc/x"', "files[0].dest"),
        ('source = "README.md"\ndest = "/etc/x y"', "files[0].dest"),
        ('source = "README.md"\ndest = "/etc/x"\nmode = "0644\\n"', "files[0].mode"),
    ],
)
def test_refused_files(tmp_path: Path, spec: str, key: str) -> None:
    assert f"key '{key}'" in load_error(tmp_path, VALID + "[[files]]\n" + spec + "\n")


def test_missing_required_setting_is_named(tmp_path: Path) -> None:
    # was a TypeError from the dataclass constructor
    message = load_error(tmp_path, VALID.replace('lock = "locks/flwr-1.41.0.txt"\n', ""))
    assert "key 'flower.lock': is required" in message


def test_bad_value_in_a_parent_names_the_parent(tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text(with_key("base", 'kernel = "linux-image-$(id)"'))
    (tmp_path / "child.toml").write_text('extends = "parent"\n[disk]\nsize = "16G"\n')
    with pytest.raises(ConfigError) as err:
        config.load("child", tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'parent.toml'}: key 'base.kernel' (read for child.toml)")


def test_bad_extend_item_names_the_child(tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text("packages = ['jq']\n" + VALID)
    (tmp_path / "child.toml").write_text("extends = \"parent\"\n[extend]\npackages = ['x; id']\n")
    with pytest.raises(ConfigError) as err:
        config.load("child", tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'child.toml'}: key 'packages[1]'")


def test_every_default_passes_its_own_check() -> None:
    for cls in (config.BaseConfig, config.DiskConfig, config.VmConfig, config.FlowerConfig, config.GpuConfig,
                config.FileSpec):  # fmt: skip
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:
                continue
            if f.metadata.get("check"):
                f.metadata["check"](f.default)
            for item in f.default if f.metadata.get("each") else ():
                f.metadata["each"](item)


def test_setting_error_for_values_from_elsewhere() -> None:
    assert config.setting_error(config.GpuConfig, "toolkit_mirror", "http://mirror.example.org/deb") is None
    error = config.setting_error(config.GpuConfig, "toolkit_mirror", "http://mirror/x y")
    assert error is not None and "http(s) URL" in error and "'http://mirror/x y'" in error
    assert config.setting_error(config.BaseConfig, "extra_packages", ("jq", "x;y")) is not None


def test_shipped_definitions_pass() -> None:
    for name in config.available():
        config.load(name)


# --- the extra packages of the debian-12 base: data, never shell text ----------------

GPU_PACKAGES = config.load("supernode-gpu").base.extra_packages


def test_no_package_name_in_any_hook(tmp_path: Path) -> None:
    hooks = debian._extra_packages_hooks(GPU_PACKAGES, tmp_path)
    for package in GPU_PACKAGES:
        assert not any(package in hook for hook in hooks), package
    assert (tmp_path / "flower-extra-packages.list").read_text().splitlines() == list(GPU_PACKAGES)
    assert hooks[-1] == f"--customize-hook={debian.EXTRA_PACKAGES_HOOK}"
    assert debian._extra_packages_hooks((), tmp_path) == []


def test_hook_refuses_what_is_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="not a Debian package name"):
        debian._extra_packages_hooks(("jq; touch /tmp/pwned",), tmp_path)


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl (mmdebstrap's language) is not installed")
def test_upload_hook_survives_mmdebstraps_word_splitting(tmp_path: Path) -> None:
    """mmdebstrap splits special hooks with Text::ParseWords::shellwords: a scratch path with
    spaces and quotes is still one argument."""
    scratch = tmp_path / 'it\'s a "dir" $(x)'
    scratch.mkdir()
    upload = debian._extra_packages_hooks(("jq",), scratch)[0].removeprefix("--customize-hook=")
    out = subprocess.run(
        ["perl", "-MText::ParseWords", "-e", 'print join("\\0", shellwords($ARGV[0]))', upload],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split("\0") == ["upload", str(scratch / "flower-extra-packages.list"), f"/{debian.EXTRA_LIST}"]


def test_hook_passes_each_line_as_one_argument(tmp_path: Path) -> None:
    """The fixed hook, run as mmdebstrap runs it (sh -c HOOK exec ROOT) with a fake chroot:
    every line reaches apt-get as exactly one argument after `--`, and nothing in it runs."""
    root = tmp_path / "root"
    (root / "var/tmp").mkdir(parents=True)
    canary = tmp_path / "ran"
    hostile = [
        "jq",
        f"$(touch {canary}1)",
        f"`touch {canary}2`",
        f"a; touch {canary}3",
        f"b && touch {canary}4 #",
        "two words",
        "  spaced  ",
        "*",
        "-o",
        "--allow-unauthenticated",
        "'\"\\",
    ]
    (root / debian.EXTRA_LIST).write_text("".join(f"{line}\n" for line in hostile))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv"
    (bin_dir / "chroot").write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{argv_file}'\n")
    (bin_dir / "chroot").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", debian.EXTRA_PACKAGES_HOOK, "exec", str(root)], env=env, check=True, cwd=tmp_path)
    argv = argv_file.read_text().split("\0")[:-1]
    assert argv == [str(root), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                    "--no-install-recommends", "--", *hostile]  # fmt: skip
    assert not list(tmp_path.glob("ran*")), "a package line was run as shell"
    assert not (root / debian.EXTRA_LIST).exists()
    assert float((root / debian.EXTRA_TIMER).read_text()) >= 0
