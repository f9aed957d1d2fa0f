"""Exact docker run argv, build info, launch spec and run-supernode exec."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_testlib import BASE, BUILD_INFO, FakeBin, FakeRoot, pythonpath_env

from supernode_runtime.gpu import GpuAccess
from supernode_runtime.launch import (
    BuildInfo,
    LaunchError,
    docker_run_argv,
    exec_supernode,
    load_build_info,
    read_launch_spec,
    write_launch_spec,
)

BUILD = BuildInfo("flwr-supernode:1.41.0", "1.41.0", "gpu")
HEAD = ["docker", "run", "--rm", "--name", "flower-supernode"]
ENV = [
    "-e",
    "FLWR_LOG_LEVEL=INFO",
    "-e",
    "FL_GPU_MEMORY_FRACTION=0.8",
    "-e",
    "TF_FORCE_GPU_ALLOW_GROWTH=true",
    "-e",
    "FL_WARM_CLIENTAPP=YES",
    "-e",
    "FLWR_TELEMETRY_ENABLED=0",
    "-e",
    "FLWR_DISABLE_UPDATE_CHECK=1",
]
TAIL_INSECURE = [
    "flwr-supernode:1.41.0",
    "--superlink",
    "10.0.0.5:8000",
    "--insecure",
    "--isolation",
    "subprocess",
]
NVIDIA = ["-e", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
CDI_ALL = GpuAccess("cdi", ("nvidia.com/gpu=all",))
CDI_0_1 = GpuAccess("cdi", ("nvidia.com/gpu=0", "nvidia.com/gpu=1"))
GPUS = GpuAccess("gpus")


def test_cpu_argv() -> None:
    assert docker_run_argv(BASE, None, BUILD) == HEAD + ENV + TAIL_INSECURE


def test_gpu_all_argv_cdi() -> None:
    cfg = dataclasses.replace(BASE, gpu_enabled=True)
    expected = [*HEAD, "--device", "nvidia.com/gpu=all", *ENV, *NVIDIA, *TAIL_INSECURE]
    assert docker_run_argv(cfg, CDI_ALL, BUILD) == expected


def test_gpu_selected_devices_argv_cdi_one_device_per_index_no_cuda_visible_devices() -> None:
    cfg = dataclasses.replace(BASE, gpu_enabled=True, cuda_visible_devices="0,1")
    expected = [*HEAD, "--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1", *ENV, *NVIDIA]
    argv = docker_run_argv(cfg, CDI_0_1, BUILD)
    assert argv == expected + TAIL_INSECURE
    assert not any(a.startswith("CUDA_VISIBLE_DEVICES") for a in argv)
    assert "--gpus" not in argv


def test_gpu_all_argv_gpus_route() -> None:
    cfg = dataclasses.replace(BASE, gpu_enabled=True)
    expected = [*HEAD, "--gpus", "all", *ENV, *NVIDIA, *TAIL_INSECURE]
    assert docker_run_argv(cfg, GPUS, BUILD) == expected


def test_gpu_selected_devices_argv_gpus_route() -> None:
    cfg = dataclasses.replace(BASE, gpu_enabled=True, cuda_visible_devices="0,1")
    expected = [*HEAD, "--gpus", "all", "-e", "CUDA_VISIBLE_DEVICES=0,1", *ENV, *NVIDIA]
    assert docker_run_argv(cfg, GPUS, BUILD) == expected + TAIL_INSECURE


def test_gpu_requested_but_missing_is_plain_cpu_argv() -> None:
    cfg = dataclasses.replace(BASE, gpu_enabled=True, cuda_visible_devices="0,1")
    assert docker_run_argv(cfg, None, BUILD) == HEAD + ENV + TAIL_INSECURE


@pytest.mark.parametrize(("warm", "value"), [(True, "YES"), (False, "NO")])
def test_warm_clientapp_and_quiet_flwr_reach_the_container(warm: bool, value: str) -> None:
    argv = docker_run_argv(dataclasses.replace(BASE, warm_clientapp=warm), None, BUILD)
    env = [argv[i + 1] for i, item in enumerate(argv) if item == "-e"]
    assert f"FL_WARM_CLIENTAPP={value}" in env
    assert {"FLWR_TELEMETRY_ENABLED=0", "FLWR_DISABLE_UPDATE_CHECK=1"} <= set(env)
    assert argv.index("FL_WARM_CLIENTAPP=" + value) < argv.index(BUILD.supernode_image)  # docker's, not flwr's


def test_tls_argv_mounts_ca_and_never_insecure() -> None:
    cfg = dataclasses.replace(BASE, tls_enabled=True, ca_cert_pem="pem")
    argv = docker_run_argv(cfg, None, BUILD)
    mount = "type=bind,source=/etc/flower/tls/ca.pem,target=/app/certificates/ca.pem,readonly"
    assert argv == HEAD + ENV + ["--mount", mount] + [
        "flwr-supernode:1.41.0",
        "--superlink",
        "10.0.0.5:8000",
        "--root-certificates",
        "/app/certificates/ca.pem",
        "--isolation",
        "subprocess",
    ]
    assert "--insecure" not in argv


def test_all_optional_flags_and_value_formatting() -> None:
    cfg = dataclasses.replace(
        BASE,
        node_config='name="a b" partition-id=0',
        max_retries=0,
        max_wait_time=12.5,
        log_level="DEBUG",
        isolation="process",
        gpu_memory_fraction=1.0,
    )
    argv = docker_run_argv(cfg, None, BUILD)
    assert argv[-9:] == [
        "--insecure",
        "--isolation",
        "process",
        "--node-config",
        'name="a b" partition-id=0',
        "--max-retries",
        "0",
        "--max-wait-time",
        "12.5",
    ]
    assert "FLWR_LOG_LEVEL=DEBUG" in argv
    assert "FL_GPU_MEMORY_FRACTION=1" in argv
    whole = dataclasses.replace(BASE, max_wait_time=300.0)
    assert docker_run_argv(whole, None, BUILD)[-2:] == ["--max-wait-time", "300"]


def test_argv_requires_an_address() -> None:
    with pytest.raises(ValueError):
        docker_run_argv(dataclasses.replace(BASE, superlink_address=None), None, BUILD)


def test_only_verified_flower_supernode_flags_are_used() -> None:
    verified = {
        "--superlink",
        "--insecure",
        "--root-certificates",
        "--isolation",
        "--node-config",
        "--max-retries",
        "--max-wait-time",
    }
    cfg = dataclasses.replace(BASE, tls_enabled=True, node_config="a=1", max_retries=3, max_wait_time=5.0)
    argv = docker_run_argv(cfg, CDI_ALL, BUILD)
    flower_args = argv[argv.index("flwr-supernode:1.41.0") + 1 :]
    assert {a for a in flower_args if a.startswith("--")} <= verified


@pytest.mark.parametrize(
    "info",
    [
        {**BUILD_INFO, "supernode_image": "--privileged"},
        {**BUILD_INFO, "supernode_image": "img name"},
        {**BUILD_INFO, "variant": "tpu"},
        {**BUILD_INFO, "flwr_version": ""},
        {"supernode_image": "x"},
        ["not", "an", "object"],
    ],
)
def test_bad_build_info_is_rejected(tmp_path: Path, info: object) -> None:
    path = tmp_path / "build.json"
    path.write_text(json.dumps(info))
    with pytest.raises(LaunchError):
        load_build_info(path)


def test_missing_build_info(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="cannot read"):
        load_build_info(tmp_path / "nope.json")


def test_good_build_info(tmp_path: Path) -> None:
    path = tmp_path / "build.json"
    path.write_text(json.dumps(BUILD_INFO))
    assert load_build_info(path) == BUILD


def test_launch_spec_round_trip_and_validation(tmp_path: Path) -> None:
    spec = tmp_path / "run" / "supernode.json"
    argv = HEAD + ENV + TAIL_INSECURE
    write_launch_spec(spec, argv, {"image": "x"})
    assert read_launch_spec(spec) == argv
    assert spec.stat().st_mode & 0o777 == 0o644
    spec.write_text(json.dumps({"argv": ["sh", "-c", "reboot"]}))
    with pytest.raises(LaunchError):
        read_launch_spec(spec)
    spec.write_text("{")
    with pytest.raises(LaunchError):
        read_launch_spec(spec)
    with pytest.raises(LaunchError, match="does not exist"):
        read_launch_spec(tmp_path / "absent.json")


def test_exec_supernode_uses_execvp_with_the_argv_list(tmp_path: Path) -> None:
    spec = tmp_path / "supernode.json"
    argv = HEAD + ENV + TAIL_INSECURE
    write_launch_spec(spec, argv, {})
    calls: list[tuple[str, list[str]]] = []
    exec_supernode(spec, execvp=lambda f, a: calls.append((f, a)))
    assert calls == [("docker", argv)]


def test_run_supernode_execs_fake_docker_with_exact_argv(
    fake_root: FakeRoot, fake_bin: FakeBin, tmp_path: Path
) -> None:
    record = tmp_path / "docker-argv.json"
    fake_bin.add(
        "docker",
        f"exec {sys.executable} -c \"import json,sys; json.dump(sys.argv[1:], open('{record}', 'w'))\" \"$@\"",
    )
    node_config = 'name="$(touch /tmp/x); `id`" partition-id=0'
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5", "FL_NODE_CONFIG": node_config})
    assert fake_root.boot().ok
    proc = subprocess.run(
        [sys.executable, "-m", "supernode_runtime", "run-supernode", "--root", str(fake_root.paths.root)],
        env=pythonpath_env({"PATH": str(fake_bin.dir)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(record.read_text())
    assert recorded == fake_root.spec()["argv"][1:]
    assert recorded[recorded.index("--node-config") + 1] == node_config


def test_run_supernode_without_spec_exits_2(fake_root: FakeRoot) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "supernode_runtime", "run-supernode", "--root", str(fake_root.paths.root)],
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


@pytest.mark.parametrize(("given", "passed"), [({}, "YES"), ({"ONEAPP_FL_WARM_CLIENTAPP": "no"}, "NO")])
def test_boot_passes_warm_clientapp_and_quiet_flwr(fake_root: FakeRoot, given: dict[str, str], passed: str) -> None:
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5", **given})
    assert fake_root.boot().ok
    argv = fake_root.spec()["argv"]
    image = argv.index(BUILD_INFO["supernode_image"])
    env = [argv[i + 1] for i, item in enumerate(argv[:image]) if item == "-e"]
    assert f"FL_WARM_CLIENTAPP={passed}" in env
    assert "FLWR_TELEMETRY_ENABLED=0" in env and "FLWR_DISABLE_UPDATE_CHECK=1" in env
