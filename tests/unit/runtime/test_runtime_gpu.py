"""GPU detection with fake lsmod / nvidia-smi / docker programs on PATH."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_testlib import FakeBin, FakeRoot

from supernode_runtime.gpu import FALLBACK_WARNING, detect_gpu, docker_gpu_flags, start_persistence_daemon

GPU_CONTEXT = {"ONEAPP_FL_SUPERLINK_ADDRESS": "10.0.0.5", "ONEAPP_FL_GPU_ENABLED": "YES"}


def test_fallback_warning_text_is_exactly_the_seed_text() -> None:
    assert FALLBACK_WARNING == "WARNING: GPU requested but not available, falling back to CPU"


def test_gpu_present(fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    result = detect_gpu(True)
    assert result.available
    assert result.fl_gpu_available == "YES"
    assert fake_bin.calls() == ["lsmod ", "nvidia-smi ", "docker info --format {{json .Runtimes}}"]


def test_gpu_present_but_no_container_toolkit_falls_back(fake_bin: FakeBin) -> None:
    fake_bin.gpu_toolkit_missing()
    result = detect_gpu(True)
    assert not result.available and result.fl_gpu_available == "NO"
    assert "no nvidia runtime" in result.reason and "Container Toolkit" in result.reason


def test_module_missing_only_nvidia_uvm_does_not_count(fake_bin: FakeBin) -> None:
    fake_bin.gpu_module_missing()
    result = detect_gpu(True)
    assert not result.available
    assert result.fl_gpu_available == "NO"
    assert "nvidia kernel module not loaded" in result.reason


def test_nvidia_smi_failing(fake_bin: FakeBin) -> None:
    fake_bin.gpu_smi_failing()
    result = detect_gpu(True)
    assert not result.available
    assert "nvidia-smi failed (exit 9)" in result.reason
    assert "couldn't communicate" in result.reason


def test_no_tools_on_path(fake_bin: FakeBin) -> None:
    result = detect_gpu(True)
    assert not result.available
    assert "lsmod failed (exit 127)" in result.reason
    assert "nvidia-smi failed (exit 127)" in result.reason


def test_not_requested_runs_nothing(fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    result = detect_gpu(False)
    assert not result.requested and not result.available
    assert fake_bin.calls() == []


def test_validate_script_runs_only_for_diagnostics_on_failure(
    fake_bin: FakeBin, tmp_path: Path
) -> None:
    script = tmp_path / "validate-gpu.sh"
    script.write_text('#!/bin/sh\n/bin/echo "  ERROR: nvidia module not loaded"\nexit 1\n')
    script.chmod(0o755)
    fake_bin.gpu_module_missing()
    failed = detect_gpu(True, script)
    assert failed.diagnostics is not None
    assert "exited 1" in failed.diagnostics
    assert "nvidia module not loaded" in failed.diagnostics
    fake_bin.gpu_present()
    assert detect_gpu(True, script).diagnostics is None


def test_missing_validate_script_is_skipped(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_smi_failing()
    assert detect_gpu(True, tmp_path / "absent.sh").diagnostics is None


@pytest.mark.parametrize(
    ("available", "devices", "flags"),
    [
        (True, "all", ["--gpus", "all"]),
        (True, "0,1", ["--gpus", "all", "-e", "CUDA_VISIBLE_DEVICES=0,1"]),
        (False, "0,1", []),
        (False, "all", []),
    ],
)
def test_docker_gpu_flags(available: bool, devices: str, flags: list[str]) -> None:
    assert docker_gpu_flags(available, devices) == flags


# --- through the boot sequence -------------------------------------------------------


def test_boot_gpu_present_adds_gpu_flags(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    fake_root.write_context({**GPU_CONTEXT, "FL_CUDA_VISIBLE_DEVICES": "0,1"})
    result = fake_root.boot()
    assert result.ok
    argv = fake_root.spec()["argv"]
    assert argv[5:9] == ["--gpus", "all", "-e", "CUDA_VISIBLE_DEVICES=0,1"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in argv
    assert fake_root.status()["gpu"]["FL_GPU_AVAILABLE"] == "YES"
    assert "[step 5/7] gpu-detection: ok" in fake_root.log()


def test_boot_gpu_present_starts_persistence_daemon(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    fake_bin.add("systemctl", "exit 0")
    fake_root.write_context(GPU_CONTEXT)
    assert fake_root.boot().ok
    assert "systemctl start --no-block nvidia-persistenced.service" in fake_bin.calls()
    assert fake_root.status()["gpu"]["persistence_daemon"] == "nvidia-persistenced.service started"


def test_persistence_daemon_failure_is_reported_not_fatal(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    fake_bin.add("systemctl", '/bin/echo "Unit nvidia-persistenced.service not found." >&2\nexit 5')
    assert start_persistence_daemon() == (
        "nvidia-persistenced.service not started (exit 5: Unit nvidia-persistenced.service not found.)"
    )
    fake_root.write_context(GPU_CONTEXT)
    assert fake_root.boot().ok
    assert fake_root.status()["gpu"]["FL_GPU_AVAILABLE"] == "YES"
    assert "not started (exit 5" in fake_root.status()["gpu"]["persistence_daemon"]


@pytest.mark.parametrize("setup", ["gpu_module_missing", "gpu_smi_failing"])
def test_boot_gpu_missing_falls_back_to_cpu_with_warning(
    fake_root: FakeRoot, fake_bin: FakeBin, setup: str
) -> None:
    getattr(fake_bin, setup)()
    fake_bin.add("docker", "exit 0")
    fake_bin.add("systemctl", "exit 0")
    validate = fake_root.paths.validate_gpu_script
    validate.parent.mkdir(parents=True)
    validate.write_text("#!/bin/sh\ndocker run --rm --gpus all nvidia/cuda nvidia-smi\nexit 1\n")
    validate.chmod(0o755)
    fake_root.write_context(GPU_CONTEXT)
    result = fake_root.boot()
    assert result.ok  # a warning, not an error
    log_lines = fake_root.log().splitlines()
    assert FALLBACK_WARNING in log_lines
    assert any(line.startswith("[step 5/7] gpu-detection: warning") for line in log_lines)
    argv = fake_root.spec()["argv"]
    assert "--gpus" not in argv
    assert not any(a.startswith("NVIDIA_DRIVER_CAPABILITIES") for a in argv)
    status = fake_root.status()
    assert status["gpu"]["FL_GPU_AVAILABLE"] == "NO"
    assert status["gpu"]["requested"] is True
    assert status["supernode_will_start"] is True
    assert any("falling back to CPU" in w for w in status["warnings"])
    assert "validate-gpu.sh exited 1" in status["gpu"]["diagnostics"]
    assert "docker run --rm --gpus all nvidia/cuda nvidia-smi" in fake_bin.calls()
    assert not any(call.startswith("systemctl") for call in fake_bin.calls())


def test_boot_gpu_not_requested_is_skipped(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    fake_root.write_context({"FL_SUPERLINK_ADDRESS": "10.0.0.5"})
    fake_root.boot()
    assert "[step 5/7] gpu-detection: skipped" in fake_root.log()
    assert fake_bin.calls() == []
    assert fake_root.status()["gpu"]["FL_GPU_AVAILABLE"] == "NO"
