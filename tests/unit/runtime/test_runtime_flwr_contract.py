"""What the runtime accepts against what the pinned flwr and Linux accept.

flwr comes from the ``flower`` extra of the tests session; these tests never skip.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import parse_config_args
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_testlib import BASE, FakeBin, FakeRoot

from supernode_runtime.config import resolve
from supernode_runtime.gpu import GpuAccess
from supernode_runtime.launch import SUPERNODE_FLAGS, BuildInfo, LaunchError, check_argv_lengths, docker_run_argv
from supernode_runtime.validators import MAX_ARG_BYTES, MAX_ARG_STRLEN, InvalidValue, node_config_values

BUILD = BuildInfo("flwr-supernode:1.41.0", "1.41.0", "gpu")


def flwr_reads(raw: str) -> dict[str, Any] | None:
    """What flower-supernode makes of ``--node-config raw`` (None: it fails)."""
    try:
        return parse_config_args([raw])
    except Exception:  # ClickException, ValueError, FileNotFoundError for "*.toml", ...
        return None


def runtime_reads(raw: str) -> dict[str, Any] | None:
    try:
        return node_config_values(raw)
    except InvalidValue:
        return None


# (value, accepted by the runtime?)  Every accepted one must read the same in flwr.
CORPUS = [
    ("partition-id=0 num-partitions=10", True),
    ('name="site a" lr=0.01 debug=true', True),
    ("name='single quoted'", True),
    ('a="x=y" b="#not a comment" c=\'it"s\'', True),
    ('a="$(touch /tmp/pwned)" b="`id`" c="; reboot"', True),
    ("a.b=1 a.c=2", True),
    ('u="caf\\u00e9"', True),
    ("a=1#x.toml", False),  # flwr opens it as a TOML file path
    ("x.toml", False),
    ('a="b.toml"', True),  # ends in a quote, not in .toml
    ("a=1#comment", False),  # TOML reads 1 and drops the comment: flwr loses text silently
    ('a="x"#c', False),
    ("a=1 garbage", False),  # flwr's findall skips "garbage" silently
    ("a=1 b", False),
    ("a=abc", False),  # unquoted word: flwr fails
    ("a=1 a=2", False),  # duplicate: flwr fails
    ("a=1 a.b=2", False),
    ('a="unterminated', False),
    ("a=[1,2]", False),  # arrays are not a UserConfig type
    ("a=1979-05-27", False),  # TOML date: not a UserConfig type
    ("-a=1", False),  # would look like an option
    ("a==1", False),
    ("=1", False),
    ('"quoted key"=1', False),
    ("a='x' b='y'z", False),
    ("", False),
]


@pytest.mark.parametrize(("raw", "accepted"), CORPUS)
def test_runtime_rule_against_flwr_parse_config_args(raw: str, accepted: bool) -> None:
    ours = runtime_reads(raw)
    assert (ours is not None) is accepted, ours
    if ours is not None:
        assert flwr_reads(raw) == ours


keys = st.from_regex(r"[a-z][a-z0-9_-]{0,6}(\.[a-z][a-z0-9]{0,3})?", fullmatch=True)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
values = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "false", "abc", "1#x", "'a'b", '"', "'"]),
    texts.map(lambda t: '"' + t + '"'),
    texts.map(lambda t: "'" + t + "'"),
    texts,
)
separators = st.sampled_from([" ", "  ", "\t", " # ", "", " = ", ".toml "])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(keys, values, separators), min_size=1, max_size=5), st.sampled_from(["", ".toml", " x"]))
def test_whatever_the_runtime_accepts_flwr_reads_the_same(pairs: list[tuple[str, str, str]], tail: str) -> None:
    raw = ("".join(f"{k}={v}{sep}" for k, v, sep in pairs) + tail).strip()
    ours = runtime_reads(raw)
    if ours is not None:
        assert flwr_reads(raw) == ours


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_accepted_only_when_flwr_agrees(raw: str) -> None:
    ours = runtime_reads(raw)
    if ours is not None:
        assert flwr_reads(raw) == ours


def test_node_config_limit_is_linux_max_arg_strlen() -> None:
    assert MAX_ARG_STRLEN == 131072  # include/uapi/linux/binfmts.h: PAGE_SIZE * 32
    fits = 'a="' + "x" * (MAX_ARG_BYTES - 4) + '"'
    assert len(fits.encode()) == MAX_ARG_BYTES
    assert runtime_reads(fits) is not None
    too_long = 'a="' + "é" * 65534 + '"'  # 65538 characters, but 131072 bytes in UTF-8
    res = resolve([("ctx", {"ONEAPP_FL_NODE_CONFIG": too_long})])
    [err] = res.errors
    assert err.variable == "ONEAPP_FL_NODE_CONFIG"
    assert "131072 bytes; one argument may have at most 131071 bytes" in err.reason


def test_oversized_node_config_stops_the_boot(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    """Regression: it passed validation and docker run then failed with E2BIG for ever."""
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5", "FL_NODE_CONFIG": 'a="' + "x" * 131072 + '"'})
    result = fake_root.boot()
    assert not result.ok and result.argv is None
    assert not fake_root.paths.launch_spec.exists()
    assert fake_root.status()["errors"][0]["variable"] == "FL_NODE_CONFIG"


def test_every_argv_item_is_checked() -> None:
    check_argv_lengths(["docker", "x" * MAX_ARG_BYTES])
    with pytest.raises(LaunchError, match="argument 2 \\(after --node-config\\) has 131072 bytes"):
        check_argv_lengths(["docker", "--node-config", "x" * MAX_ARG_STRLEN])


def supernode_help() -> str:
    exe = Path(sys.executable).parent / "flower-supernode"
    assert exe.exists(), f"{exe}: flwr is not installed in the tests venv (the 'flower' extra)"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_launch_flags_exist_in_the_real_flower_supernode_help() -> None:
    text = supernode_help()
    offered = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    assert set(SUPERNODE_FLAGS) <= offered, set(SUPERNODE_FLAGS) - offered
    assert "--isolation {subprocess,process}" in text


@pytest.mark.parametrize("tls", [False, True])
def test_flwr_own_parser_reads_the_launch_argv_verbatim(tls: bool) -> None:
    node_config = "a=\"--insecure $(id)\" b='-x; reboot' c=1"
    cfg = dataclasses.replace(
        BASE, tls_enabled=tls, node_config=node_config, max_retries=3, max_wait_time=2.5, isolation="process"
    )
    argv = docker_run_argv(cfg, GpuAccess("cdi", ("nvidia.com/gpu=all",)), BUILD)
    args = _parse_args_run_supernode().parse_args(argv[argv.index(BUILD.supernode_image) + 1 :])
    assert args.node_config == node_config
    assert args.superlink == "10.0.0.5:8000"
    assert args.insecure is (not tls)
    assert args.root_certificates == ("/app/certificates/ca.pem" if tls else None)
    assert (args.isolation, args.max_retries, args.max_wait_time) == ("process", 3, 2.5)
