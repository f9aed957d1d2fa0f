"""Property tests: no context value is ever executed, and no shell is ever used.

Canary programs named like the things hostile values try to run sit first on
PATH; each writes a marker file when started. subprocess and os.system are
wrapped so any shell=True or string command fails the test. The PATH also has
a GPU (fake lsmod, nvidia-smi, a docker whose ``info`` reports CDI on and the nvidia
runtime, an nvidia-ctk that writes the CDI spec and lists eight GPUs, systemctl), so the
CDI ``--device`` branch is reached; any other docker, nvidia-ctk or systemctl call counts
as executed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from runtime_testlib import LSMOD_WITH_NVIDIA, FakeRoot

from supernode_runtime.context_parser import format_context, parse_context
from supernode_runtime.paths import Paths
from supernode_runtime.variables import VARIABLES

CANARIES = ("canary", "id", "touch", "rm", "reboot", "curl", "wget", "nc", "sh", "bash", "sleep")

HOSTILE = [
    "$(canary)",
    "`canary`",
    "; canary",
    "| canary",
    "&& canary",
    "\ncanary\n",
    "'; canary; '",
    '"; canary; "',
    "$(touch /tmp/pwned)",
    "10.0.0.5:8000; reboot",
    "YES$(id)",
    "0,1`rm -rf /`",
    'a="$(canary)" b=`id`',
    "a=1 ; canary",
    "x' ; canary #",
    "${IFS}canary",
    "\\$(canary)",
    "http://127.0.0.1:9/$(canary)",
]

hostile_values = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=60))
names = st.sampled_from([v.name for v in VARIABLES] + [v.oneapp_name for v in VARIABLES] + ["ONEGATE_ENDPOINT"])


@pytest.fixture(scope="module")
def canary_env() -> Iterator[tuple[Path, Path]]:
    """A PATH with canaries plus working fake lsmod / nvidia-smi."""
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        marker = Path(tmp) / "EXECUTED"
        for name in CANARIES:
            script = bin_dir / name
            script.write_text(f'#!/bin/sh\n/bin/echo "{name} $*" >> "{marker}"\n')
            script.chmod(0o755)
        lsmod_out = Path(tmp) / "lsmod.out"
        lsmod_out.write_text(LSMOD_WITH_NVIDIA)
        (bin_dir / "lsmod").write_text(f'#!/bin/sh\n/bin/cat "{lsmod_out}"\n')
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        runtimes = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'
        (bin_dir / "docker").write_text(
            '#!/bin/sh\nif [ "$*" = "info --format {{json .Runtimes}}" ]; then\n'
            f"  /bin/echo '{runtimes}'\n  exit 0\nfi\n"
            'if [ "$*" = "info --format {{json .CDISpecDirs}}" ]; then\n'
            '  /bin/echo \'["/etc/cdi","/var/run/cdi"]\'\n  exit 0\nfi\n'
            f'/bin/echo "docker $*" >> "{marker}"\n'
        )
        (bin_dir / "nvidia-ctk").write_text(
            '#!/bin/sh\ncase "$*" in\n'
            '  "cdi generate --output="*" --device-name-strategy=index")\n'
            '    out=${3#--output=}; /bin/echo "cdiVersion: 0.5.0" > "$out"; exit 0 ;;\n'
            '  "cdi list") for d in 0 1 2 3 4 5 6 7 all; do /bin/echo "nvidia.com/gpu=$d"; done; exit 0 ;;\n'
            f'esac\n/bin/echo "nvidia-ctk $*" >> "{marker}"\n'
        )
        (bin_dir / "systemctl").write_text(
            '#!/bin/sh\n[ "$*" = "start --no-block nvidia-persistenced.service" ] && exit 0\n'
            f'/bin/echo "systemctl $*" >> "{marker}"\n'
        )
        openssl = shutil.which("openssl")
        if openssl:  # the CA check's fallback route (the cryptography route runs nothing)
            (bin_dir / "openssl").symlink_to(openssl)
        for name in ("lsmod", "nvidia-smi", "docker", "nvidia-ctk", "systemctl"):
            (bin_dir / name).chmod(0o755)
        old_path = os.environ.get("PATH", "")
        os.environ["PATH"] = str(bin_dir)
        try:
            yield bin_dir, marker
        finally:
            os.environ["PATH"] = old_path


@pytest.fixture
def no_shell(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every program started; fail on shell=True or a string command."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    class CheckedPopen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, args: Any, *a: Any, **kw: Any) -> None:
            assert not kw.get("shell"), f"shell=True used for {args!r}"
            assert isinstance(args, list), f"command is not an argv list: {args!r}"
            assert all(isinstance(x, str) for x in args)
            started.append(list(args))
            super().__init__(args, *a, **kw)

    def forbidden(*args: Any, **kw: Any) -> None:
        raise AssertionError(f"shell API used: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", CheckedPopen)
    monkeypatch.setattr(os, "system", forbidden)
    monkeypatch.setattr(os, "popen", forbidden)
    monkeypatch.setattr(os, "execvp", forbidden)
    return started


ALLOWED = {
    ("lsmod",),
    ("nvidia-smi",),
    ("docker", "info", "--format", "{{json .Runtimes}}"),
    ("docker", "info", "--format", "{{json .CDISpecDirs}}"),
    ("nvidia-ctk", "cdi", "list"),
    ("systemctl", "start", "--no-block", "nvidia-persistenced.service"),
    ("openssl", "x509", "-inform", "DER", "-outform", "DER"),
}


def _allowed(argv: list[str]) -> bool:
    name = Path(argv[0]).name
    if name == "nvidia-ctk" and argv[1:3] == ["cdi", "generate"]:  # the spec goes below the fake root
        return (
            len(argv) == 5
            and argv[3].startswith("--output=/")
            and argv[3].endswith("/var/run/cdi/nvidia.yaml")
            and argv[4] == "--device-name-strategy=index"
        )
    return (name, *argv[1:]) in ALLOWED


DOCKER_OPTIONS = {"--rm": 0, "--name": 1, "--gpus": 1, "--device": 1, "-e": 1, "--mount": 1}
QUIET = ["FLWR_TELEMETRY_ENABLED=0", "FLWR_DISABLE_UPDATE_CHECK=1"]


def check_launch_argv(argv: list[str], config: dict[str, Any]) -> Any:
    """Read the argv as docker and flower-supernode will: docker's options (all known,
    each with its arity), the image, then flwr's own argument parser for the rest.
    Every value must come back whole, in its own item, and nothing may be an option
    that the runtime did not put there. Returns (docker env list, flwr args)."""
    assert argv[:2] == ["docker", "run"]
    env, i = [], 2
    while argv[i].startswith("-"):
        arity = DOCKER_OPTIONS[argv[i]]  # KeyError: an unknown option
        if argv[i] == "-e":
            env.append(argv[i + 1])
        i += 1 + arity
    assert argv[i] == "flwr-supernode:1.41.0"
    args = _parse_args_run_supernode().parse_args(argv[i + 1 :])  # SystemExit on anything unknown
    assert args.superlink == config["FL_SUPERLINK_ADDRESS"]["value"]
    assert args.node_config == (config["FL_NODE_CONFIG"]["value"] or None)
    assert args.isolation == config["FL_ISOLATION"]["value"]
    names = sorted(item.split("=", 1)[0] for item in env)
    expected = [
        "FLWR_LOG_LEVEL",
        "FL_GPU_MEMORY_FRACTION",
        "TF_FORCE_GPU_ALLOW_GROWTH",
        "FL_WARM_CLIENTAPP",
        "FLWR_TELEMETRY_ENABLED",
        "FLWR_DISABLE_UPDATE_CHECK",
    ]
    assert all(item in env for item in QUIET)
    assert f"FL_WARM_CLIENTAPP={'YES' if config['FL_WARM_CLIENTAPP']['value'] else 'NO'}" in env
    if "--device" in argv:
        assert "--gpus" not in argv
        devices = [argv[j + 1] for j, item in enumerate(argv[:i]) if item == "--device"]
        wanted = config["FL_CUDA_VISIBLE_DEVICES"]["value"]
        assert devices == [f"nvidia.com/gpu={d}" for d in wanted.split(",")]
        expected.append("NVIDIA_DRIVER_CAPABILITIES")
    if "--gpus" in argv:
        assert argv[argv.index("--gpus") + 1] == "all"
        expected.append("NVIDIA_DRIVER_CAPABILITIES")
        devices = config["FL_CUDA_VISIBLE_DEVICES"]["value"]
        if devices != "all":
            expected.append("CUDA_VISIBLE_DEVICES")
            assert f"CUDA_VISIBLE_DEVICES={devices}" in env
    assert names == sorted(expected)
    return env, args


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.dictionaries(names, hostile_values, max_size=8), st.booleans())
@example({"FL_NODE_CONFIG": 'a="$(canary)" b="`canary`" c=\'; canary\''}, True)
@example({"ONEGATE_ENDPOINT": "http://127.0.0.1:9/$(canary)", "FL_SUPERLINK_ADDRESS": ""}, True)
@example({"ONEAPP_FL_CUDA_VISIBLE_DEVICES": "0,1`canary`"}, True)
@example({"FL_WARM_CLIENTAPP": "NO$(canary)", "FL_CUDA_VISIBLE_DEVICES": "1"}, True)
def test_boot_never_executes_context_values(
    canary_env: tuple[Path, Path],
    no_shell: list[list[str]],
    values: dict[str, str],
    gpu: bool,
) -> None:
    _, marker = canary_env
    # A valid base so many examples get through to GPU detection and the launch spec;
    # the generated (hostile) values override it.
    values = {"FL_SUPERLINK_ADDRESS": "10.0.0.5:8000", "VMID": "42", **values}
    if gpu:
        values = {**values, "ONEAPP_FL_GPU_ENABLED": "YES"}
    with tempfile.TemporaryDirectory() as tmp:
        root = FakeRoot(Paths.from_root(Path(tmp)), io.StringIO())
        root.write_build_info()
        root.write_context(values, raw_text=format_context(values))
        result = root.boot()
        assert not marker.exists(), marker.read_text()
        assert all(_allowed(argv) for argv in no_shell), no_shell
        if result.argv is not None:
            argv = root.spec()["argv"]
            check_launch_argv(argv, result.report.config)
            assert ("--device" in argv) is (result.report.gpu.get("available") is True)
        else:
            assert not root.paths.launch_spec.exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_parser_never_executes_anything(canary_env: tuple[Path, Path], no_shell: list[list[str]], text: str) -> None:
    _, marker = canary_env
    parse_context(text + "\nX='$(canary)'\nY='`canary`'\n")
    assert no_shell == []
    assert not marker.exists()


def test_canaries_would_detect_execution(canary_env: tuple[Path, Path]) -> None:
    """The canary mechanism itself works (so the properties above can fail)."""
    bin_dir, marker = canary_env
    subprocess.run([str(bin_dir / "canary"), "probe"], check=True)
    try:
        assert marker.read_text() == "canary probe\n"
    finally:
        marker.unlink()


# Valid values that carry shell syntax: they must reach the GPU launch verbatim.
SHELLISH = st.sampled_from(
    [
        "$(canary)",
        "`canary`",
        "; canary",
        "| canary",
        "&& canary",
        "--insecure",
        "-e X=1",
        "${IFS}",
        "#",
        "=",
        "\\",
        "'",
        '"',
        " ",
        "--gpus all",
        "$HOME",
        "!",
        "*",
    ]
)
shell_text = st.lists(
    st.one_of(SHELLISH, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6)), max_size=6
).map("".join)


def toml_string(text: str) -> str | None:
    """``text`` as a TOML string flwr reads whole: '...' without ', else "..." without " or \\."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text and "\\" not in text:
        return f'"{text}"'
    return None


node_configs = st.lists(
    st.tuples(st.from_regex(r"[a-z][a-z0-9-]{0,5}", fullmatch=True), shell_text), min_size=1, max_size=4
).map(lambda pairs: " ".join(f"{k}-{i}={q}" for i, (k, t) in enumerate(pairs) if (q := toml_string(t))))
gpu_indices = st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True)
devices = st.one_of(st.just("all"), gpu_indices.map(lambda d: ",".join(map(str, d))))


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(node_configs, devices, st.sampled_from(["subprocess", "process"]), st.booleans())
@example("a='$(canary)' b=\"`canary`; --insecure\" c='-e X=1'", "0,1", "subprocess", True)
def test_valid_shellish_values_reach_the_gpu_launch_verbatim(
    canary_env: tuple[Path, Path],
    no_shell: list[list[str]],
    node_config: str,
    cuda_devices: str,
    isolation: str,
    oneapp: bool,
) -> None:
    _, marker = canary_env
    prefix = "ONEAPP_" if oneapp else ""
    values = {
        f"{prefix}FL_SUPERLINK_ADDRESS": "sl.example:9092",
        f"{prefix}FL_GPU_ENABLED": "YES",
        f"{prefix}FL_CUDA_VISIBLE_DEVICES": cuda_devices,
        f"{prefix}FL_ISOLATION": isolation,
    }
    if node_config:
        values[f"{prefix}FL_NODE_CONFIG"] = node_config
    with tempfile.TemporaryDirectory() as tmp:
        root = FakeRoot(Paths.from_root(Path(tmp)), io.StringIO())
        root.write_build_info()
        root.write_context(values)
        result = root.boot()
        assert result.ok, result.report.errors
        assert not marker.exists(), marker.read_text()
        assert all(_allowed(argv) for argv in no_shell), no_shell
        argv = root.spec()["argv"]
        assert "--device" in argv  # the GPU (CDI) branch was reached
        _, args = check_launch_argv(argv, result.report.config)
        assert args.node_config == (node_config or None)  # byte for byte, one argv item
        assert args.superlink == "sl.example:9092"
