"""scripts/validate-gpu.sh (runs inside the GPU VM) against fake commands and a fake root."""

from __future__ import annotations

import re

import pytest
from gpu_scripts_support import DRIVER, SUPERNODE_IMAGE, TS, VALIDATE_GPU, Result, Sandbox

ALL_PASSED = "GPU validation PASSED: all 7 checks successful"


def failed(n: int) -> str:
    return f"GPU validation FAILED: {n} error(s) detected"


def check_line(result: Result, status: str, num: int) -> str:
    """The single `[STATUS] Check num/7 ...` line of check `num`."""
    lines = [line for line in result.level_lines(status) if line.startswith(f"Check {num}/7 ")]
    assert len(lines) == 1, result.stdout
    return lines[0]


def assert_failures(result: Result, *nums: int) -> list[str]:
    """Exactly checks `nums` failed (every other one passed); their FAIL lines."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert failed(len(nums)) in result.stdout
    assert len(result.level_lines("PASS")) == 7 - len(nums)
    return [check_line(result, "FAIL", num) for num in nums]


def assert_only_failure(result: Result, num: int) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert failed(1) in result.stdout
    assert len(result.level_lines("PASS")) == 6
    return check_line(result, "FAIL", num)


# --------------------------------------------------------------------------------- all good
def test_all_checks_pass(vm: Sandbox) -> None:
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(r.level_lines("PASS")) == 7
    assert r.level_lines("FAIL") == []
    for num in range(1, 8):
        check_line(r, "PASS", num)
    assert ALL_PASSED in r.lines[-1]
    assert re.match(rf"^{TS} GPU validation PASSED", r.lines[-1])
    assert "NVIDIA A100-PCIE-40GB (40960 MiB)" in check_line(r, "PASS", 2)
    assert DRIVER in check_line(r, "PASS", 5)


def test_every_status_line_has_timestamp(vm: Sandbox) -> None:
    r = vm.run(VALIDATE_GPU)
    status = [line for line in r.lines if "[PASS]" in line or "[FAIL]" in line]
    assert len(status) == 7
    assert all(re.match(rf"^{TS} \[(PASS|FAIL)\] ", line) for line in status)


def test_validate_root_env_equivalent_to_option(vm: Sandbox) -> None:
    vm.env_extra["VALIDATE_ROOT"] = str(vm.root)
    r = vm.run(VALIDATE_GPU, root=False)
    assert r.returncode == 0, r.stdout
    assert "flwr/supernode" in check_line(r, "PASS", 4)


def test_no_set_e_every_failure_is_counted(vm: Sandbox) -> None:
    # With `set -e` the script would stop at the first failing command; all seven checks
    # must run and be counted (check 6 passes: the CDI spec is still listed).
    vm.remove_tool("nvidia-smi")
    vm.fake("lsmod", out="Module Size Used by\n")
    vm.remove("etc/docker/daemon.json")
    vm.fake("docker", "image_inspect", rc=1, err="Error: No such image: x\n")
    r = vm.run(VALIDATE_GPU, path=vm.path_without("nvidia-smi"))
    assert r.returncode == 1
    assert len(r.level_lines("FAIL")) == 6
    assert failed(6) in r.lines[-1]
    assert [line.split()[1] for line in r.level_lines("PASS")] == ["6/7"]


# ------------------------------------------------------------------- check 1: kernel module
def test_check1_fails_without_nvidia_module(vm: Sandbox) -> None:
    vm.fake("lsmod", out="Module Size Used by\next4 1 1\n")
    r = vm.run(VALIDATE_GPU)
    line = assert_only_failure(r, 1)
    assert "nvidia module not loaded" in line
    assert any("modprobe nvidia" in f for f in r.fixes)


def test_check1_requires_exact_module_name(vm: Sandbox) -> None:
    # nvidia_uvm / nvidiafb alone contain "nvidia" but are not the driver (a plain
    # `grep nvidia` would accept them).
    vm.fake("lsmod", out="Module Size Used by\nnvidia_uvm 1 0\nnvidiafb 1 0\n")
    r = vm.run(VALIDATE_GPU)
    assert_only_failure(r, 1)


def test_check1_fails_when_lsmod_missing(vm: Sandbox) -> None:
    vm.remove_tool("lsmod")
    r = vm.run(VALIDATE_GPU, path=vm.path_without("lsmod"))
    assert "lsmod not found" in assert_only_failure(r, 1)


def test_check1_fails_when_lsmod_errors(vm: Sandbox) -> None:
    vm.fake("lsmod", rc=1, err="lsmod: ERROR: could not open '/proc/modules'\n")
    r = vm.run(VALIDATE_GPU)
    assert "could not open" in assert_only_failure(r, 1)


# ---------------------------------------------------------------------- check 2: nvidia-smi
def test_check2_fails_when_nvidia_smi_errors(vm: Sandbox) -> None:
    vm.fake(
        "nvidia-smi",
        "query",
        rc=9,
        out="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
    )
    r = vm.run(VALIDATE_GPU)
    line = assert_only_failure(r, 2)
    assert "couldn't communicate with the NVIDIA driver" in line


def test_check2_fails_when_no_gpu_reported(vm: Sandbox) -> None:
    vm.fake("nvidia-smi", "query", out="\n")
    r = vm.run(VALIDATE_GPU)
    assert "no GPU" in assert_only_failure(r, 2)


def test_check2_counts_gpus(vm: Sandbox) -> None:
    vm.fake("nvidia-smi", "query", out="NVIDIA L4, 23034 MiB\nNVIDIA L4, 23034 MiB\n")
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0
    assert "2 GPU(s) detected - NVIDIA L4 (23034 MiB)" in check_line(r, "PASS", 2)


def test_missing_nvidia_smi_fails_checks_2_and_5(vm: Sandbox) -> None:
    vm.remove_tool("nvidia-smi")
    r = vm.run(VALIDATE_GPU, path=vm.path_without("nvidia-smi"))
    assert r.returncode == 1
    assert "not found" in check_line(r, "FAIL", 2)
    assert "not found" in check_line(r, "FAIL", 5)
    assert failed(2) in r.stdout


# ------------------------------------------------------------------ check 3: docker runtime
def test_check3_fails_without_nvidia_runtime(vm: Sandbox) -> None:
    vm.write_json("etc/docker/daemon.json", {"log-driver": "json-file"})
    r = vm.run(VALIDATE_GPU)
    line = assert_only_failure(r, 3)
    assert 'no "nvidia" runtime' in line
    assert "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker" in r.fixes


def test_check3_parses_json_not_substring(vm: Sandbox) -> None:
    # A plain grep '"nvidia"' would accept this; the JSON parse does not.
    vm.write_json("etc/docker/daemon.json", {"labels": ["nvidia"], "data-root": "/var/lib/docker"})
    r = vm.run(VALIDATE_GPU)
    assert_only_failure(r, 3)


def test_check3_fails_on_invalid_json(vm: Sandbox) -> None:
    vm.write("etc/docker/daemon.json", '{"runtimes": {"nvidia": {}},\n')
    r = vm.run(VALIDATE_GPU)
    assert "not valid JSON" in assert_only_failure(r, 3)


def test_check3_fails_when_daemon_json_missing(vm: Sandbox) -> None:
    vm.remove("etc/docker/daemon.json")
    r = vm.run(VALIDATE_GPU)
    assert "not found" in assert_only_failure(r, 3)


def test_check3_accepts_default_runtime(vm: Sandbox) -> None:
    vm.write_json("etc/docker/daemon.json", {"default-runtime": "nvidia"})
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0, r.stdout


def test_check3_falls_back_to_docker_info(vm: Sandbox) -> None:
    vm.remove("etc/docker/daemon.json")
    vm.fake("docker", "info", out='{"nvidia":{"path":"nvidia-container-runtime"},"runc":{}}\n')
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0, r.stdout
    assert "docker info" in check_line(r, "PASS", 3)


@pytest.mark.parametrize(
    ("daemon", "ok"),
    [
        ('{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}', True),
        ('{"log-driver": "json-file"}', False),
    ],
)
def test_check3_grep_fallback_without_python3(vm: Sandbox, daemon: str, ok: bool) -> None:
    vm.write("etc/docker/daemon.json", daemon)
    r = vm.run(VALIDATE_GPU, path=vm.path_without("python3"))
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
        # build.json was read by the sed fallback too (image + driver comparison)
        assert SUPERNODE_IMAGE in check_line(r, "PASS", 4)
        assert "matches" in check_line(r, "PASS", 5)
    else:
        assert_only_failure(r, 3)


# ------------------------------------------------------------- check 4: container GPU access
def test_check4_command_line(vm: Sandbox) -> None:
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0
    calls = vm.calls("docker")
    assert f"image inspect --format {{{{.Id}}}} {SUPERNODE_IMAGE}" in calls
    run = [c for c in calls if c.startswith("run ") and "--gpus" in c.split()]
    assert len(run) == 1
    argv = run[0].split()
    assert "--rm" in argv and "--pull=never" in argv
    assert argv[argv.index("--gpus") + 1] == "all"
    assert argv[argv.index("-e") + 1] == "NVIDIA_DRIVER_CAPABILITIES=compute,utility"
    assert argv[argv.index("--entrypoint") + 1] == "nvidia-smi"
    assert argv[-2:] == [SUPERNODE_IMAGE, "-L"]
    assert "1 GPU(s)" in check_line(r, "PASS", 4)


def test_check4_fails_when_image_not_local_and_never_runs(vm: Sandbox) -> None:
    vm.fake("docker", "image_inspect", rc=1, err=f"Error: No such image: {SUPERNODE_IMAGE}\n")
    r = vm.run(VALIDATE_GPU)
    line, cdi = assert_failures(r, 4, 7)  # both container checks use the local image
    assert "not in the local Docker store" in line and SUPERNODE_IMAGE in line
    assert "not in the local Docker store" in cdi
    assert not [c for c in vm.calls("docker") if c.startswith("run ")]


def test_check4_env_overrides_build_json(vm: Sandbox) -> None:
    vm.env_extra["VALIDATE_GPU_IMAGE"] = "local/gpu-test:1"
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0
    assert "image inspect --format {{.Id}} local/gpu-test:1" in vm.calls("docker")
    assert "local/gpu-test:1" in check_line(r, "PASS", 4)


def test_check4_image_option_overrides_env(vm: Sandbox) -> None:
    vm.env_extra["VALIDATE_GPU_IMAGE"] = "local/from-env:1"
    r = vm.run(VALIDATE_GPU, "--image", "local/from-cli:1")
    assert r.returncode == 0
    assert "local/from-cli:1" in check_line(r, "PASS", 4)


def test_check4_fails_without_configured_image(vm: Sandbox) -> None:
    vm.write_json("etc/flower/build.json", {"nvidia_driver_version": DRIVER})
    r = vm.run(VALIDATE_GPU)
    line, cdi = assert_failures(r, 4, 7)
    assert "no test image configured" in line and "supernode_image" in line and "no test image" in cdi
    assert not any(c.startswith("image") for c in vm.calls("docker"))


def test_check4_fails_when_build_json_missing(vm: Sandbox) -> None:
    vm.remove("etc/flower/build.json")
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 1
    assert "no test image configured" in check_line(r, "FAIL", 4)
    assert "no test image configured" in check_line(r, "FAIL", 7)
    # check 5 has nothing to compare against but the driver is readable
    assert "no nvidia_driver_version" in check_line(r, "PASS", 5)
    assert failed(2) in r.stdout


def test_check4_fails_when_container_cannot_see_gpu(vm: Sandbox) -> None:
    vm.fake(
        "docker",
        "run",
        rc=125,
        err='docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].\n',
    )
    r = vm.run(VALIDATE_GPU)
    line = assert_only_failure(r, 4)
    assert "could not select device driver" in line and "exit 125" in line


def test_check4_fails_when_container_lists_no_gpu(vm: Sandbox) -> None:
    vm.fake("docker", "run", out="No devices found.\n")
    line = assert_only_failure(vm.run(VALIDATE_GPU), 4)
    assert "No devices found" in line and "started with --gpus all" in line


def test_check4_times_out(vm: Sandbox) -> None:
    (vm.state / "docker" / "run.sleep").write_text("10")
    vm.env_extra["VALIDATE_GPU_TIMEOUT"] = "1"
    r = vm.run(VALIDATE_GPU)
    assert "did not finish within 1s" in assert_only_failure(r, 4)


def test_invalid_timeout_is_usage_error(vm: Sandbox) -> None:
    vm.env_extra["VALIDATE_GPU_TIMEOUT"] = "soon"
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 2 and "VALIDATE_GPU_TIMEOUT" in r.stderr


def test_check4_fails_without_docker(vm: Sandbox) -> None:
    vm.remove_tool("docker")
    r = vm.run(VALIDATE_GPU, path=vm.path_without("docker"))
    line, spec, _ = assert_failures(r, 4, 6, 7)
    assert "docker not found" in line and "docker not found" in spec


# ---------------------------------------------------------------- check 5: driver version
def test_check5_fails_on_version_mismatch(vm: Sandbox) -> None:
    vm.fake("nvidia-smi", "driver", out="535.216.01\n")
    r = vm.run(VALIDATE_GPU)
    line = assert_only_failure(r, 5)
    assert "535.216.01 does not match" in line and DRIVER in line


@pytest.mark.parametrize(
    ("expected", "ok"),
    [
        ("550", True),
        ("550.127", True),
        ("550.127.05", True),
        ("55", False),
        ("550.12", False),
    ],
)
def test_check5_prefix_comparison(vm: Sandbox, expected: str, ok: bool) -> None:
    vm.write_json(
        "etc/flower/build.json",
        {"supernode_image": SUPERNODE_IMAGE, "nvidia_driver_version": expected},
    )
    r = vm.run(VALIDATE_GPU)
    assert (r.returncode == 0) is ok, r.stdout


def test_check5_passes_without_expected_version(vm: Sandbox) -> None:
    vm.write_json("etc/flower/build.json", {"supernode_image": SUPERNODE_IMAGE})
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0
    assert f"driver {DRIVER} (no nvidia_driver_version" in check_line(r, "PASS", 5)


def test_check5_fails_when_driver_version_unreadable(vm: Sandbox) -> None:
    vm.fake("nvidia-smi", "driver", rc=9, out="NVIDIA-SMI has failed\n")
    r = vm.run(VALIDATE_GPU)
    assert "cannot read the driver version" in assert_only_failure(r, 5)


# -------------------------------------------------------------------------------------- CLI
def test_help(vm: Sandbox) -> None:
    r = vm.run(VALIDATE_GPU, "--help", root=False)
    assert r.returncode == 0
    assert "Usage: validate-gpu.sh" in r.stdout
    for opt in ("--root", "--image", "VALIDATE_GPU_IMAGE", "VALIDATE_ROOT"):
        assert opt in r.stdout
    assert vm.calls("docker") == []


@pytest.mark.parametrize("args", [("--bogus",), ("--root",), ("--root", "/nonexistent/dir")])
def test_usage_errors_exit_2(vm: Sandbox, args: tuple[str, ...]) -> None:
    r = vm.run(VALIDATE_GPU, *args, root=False)
    assert r.returncode == 2
    assert "validate-gpu.sh:" in r.stderr


# ------------------------------------------------------------- checks 6 and 7: CDI
def test_check6_lists_the_cdi_devices(vm: Sandbox) -> None:
    r = vm.run(VALIDATE_GPU)
    line = check_line(r, "PASS", 6)
    assert "var/run/cdi/nvidia.yaml" in line and "nvidia.com/gpu=0 nvidia.com/gpu=all" in line
    assert vm.calls("nvidia-ctk") == ["cdi list"]
    assert "info --format {{json .CDISpecDirs}}" in vm.calls("docker")


def test_check6_fails_without_the_spec(vm: Sandbox) -> None:
    vm.remove("var/run/cdi/nvidia.yaml")
    line = assert_only_failure(vm.run(VALIDATE_GPU), 6)
    assert "no CDI spec" in line
    assert vm.calls("nvidia-ctk") == []


def test_check6_accepts_the_static_spec_location(vm: Sandbox) -> None:
    vm.remove("var/run/cdi/nvidia.yaml")
    vm.write("etc/cdi/nvidia.yaml", "cdiVersion: 0.5.0\n")
    assert "etc/cdi/nvidia.yaml" in check_line(vm.run(VALIDATE_GPU), "PASS", 6)


def test_check6_fails_without_nvidia_ctk(vm: Sandbox) -> None:
    vm.remove_tool("nvidia-ctk")
    r = vm.run(VALIDATE_GPU, path=vm.path_without("nvidia-ctk"))
    assert "nvidia-ctk not found" in assert_only_failure(r, 6)


@pytest.mark.parametrize(
    ("out", "rc", "expected"),
    [
        ("", 0, "no nvidia.com/gpu devices"),
        ("nvidia.com/gpu=0\n", 0, "names no nvidia.com/gpu=all"),
        ("", 1, "nvidia-ctk cdi list failed"),
    ],
)
def test_check6_fails_when_the_list_lacks_the_gpu(vm: Sandbox, out: str, rc: int, expected: str) -> None:
    vm.fake("nvidia-ctk", "cdi_list", out=out, rc=rc, err="ERROR: cannot read specs\n" if rc else "")
    assert expected in assert_only_failure(vm.run(VALIDATE_GPU), 6)


def test_check7_command_line(vm: Sandbox) -> None:
    r = vm.run(VALIDATE_GPU)
    run = [c.split() for c in vm.calls("docker") if c.startswith("run ") and "--device" in c.split()]
    assert len(run) == 1
    argv = run[0]
    assert "--rm" in argv and "--pull=never" in argv and "--gpus" not in argv
    assert argv[argv.index("--device") + 1] == "nvidia.com/gpu=all"
    assert argv[argv.index("--entrypoint") + 1] == "nvidia-smi"
    assert argv[-2:] == [SUPERNODE_IMAGE, "-L"]
    assert "1 GPU(s) through nvidia.com/gpu=all" in check_line(r, "PASS", 7)


def test_check7_fails_when_the_cdi_device_is_unresolvable(vm: Sandbox) -> None:
    vm.fake(
        "docker",
        "run_cdi",
        rc=125,
        err='docker: Error response from daemon: could not select device driver "cdi": '
        "unresolvable CDI devices nvidia.com/gpu=all.\n",
    )
    line = assert_only_failure(vm.run(VALIDATE_GPU), 7)
    assert "unresolvable CDI devices" in line and "exit 125" in line


def test_check7_fails_when_the_container_lists_no_gpu(vm: Sandbox) -> None:
    vm.fake("docker", "run_cdi", out="No devices found.\n")
    line = assert_only_failure(vm.run(VALIDATE_GPU), 7)
    assert "No devices found" in line and "started with --device nvidia.com/gpu=all" in line


def test_checks6_7_skipped_without_docker_cdi(vm: Sandbox) -> None:
    """Docker 20.10 (a debian-12 image) has no CDISpecDirs field: the --gpus checks decide."""
    vm.fake(
        "docker",
        "info_cdi",
        rc=1,
        err='template: :1:8: executing "" at <.CDISpecDirs>: can\'t evaluate field CDISpecDirs\n',
    )
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0, r.stdout
    skipped = r.level_lines("SKIP")
    assert [line.split()[1] for line in skipped] == ["6/7", "7/7"]
    assert "GPU validation PASSED: 5 checks successful, 2 skipped" in r.lines[-1]
    assert not [c for c in vm.calls("docker") if "--device" in c.split()]
    assert vm.calls("nvidia-ctk") == []


def test_checks6_7_skipped_when_cdi_feature_off(vm: Sandbox) -> None:
    vm.fake("docker", "info_cdi", out="[]\n")
    r = vm.run(VALIDATE_GPU)
    assert r.returncode == 0 and len(r.level_lines("SKIP")) == 2


def test_checks6_7_fail_when_docker_does_not_answer(vm: Sandbox) -> None:
    vm.fake("docker", "info_cdi", rc=1, err="Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")
    spec, run = assert_failures(vm.run(VALIDATE_GPU), 6, 7)
    assert "Cannot connect to the Docker daemon" in spec and "did not answer" in run
