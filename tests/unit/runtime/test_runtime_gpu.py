"""GPU detection with fake lsmod / nvidia-smi / docker / nvidia-ctk programs on PATH."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_testlib import CDI_DEVICES_TWO_GPUS, FakeBin, FakeRoot

from supernode_runtime.gpu import (
    FALLBACK_WARNING,
    GpuAccess,
    detect_gpu,
    docker_gpu_flags,
    start_persistence_daemon,
    wanted_cdi_devices,
)

GPU_CONTEXT = {"ONEAPP_FL_SUPERLINK_ADDRESS": "10.0.0.5", "ONEAPP_FL_GPU_ENABLED": "YES"}


def test_fallback_warning_text_is_exactly_the_seed_text() -> None:
    assert FALLBACK_WARNING == "WARNING: GPU requested but not available, falling back to CPU"


CDI_QUERY = "docker info --format {{json .CDISpecDirs}}"


def test_gpu_present_generates_the_cdi_spec(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present()
    spec = tmp_path / "run" / "cdi" / "nvidia.yaml"
    result = detect_gpu(True, cdi_spec=spec)
    assert result.available
    assert result.fl_gpu_available == "YES"
    assert result.access == GpuAccess("cdi", ("nvidia.com/gpu=all",))
    assert fake_bin.calls() == [
        "lsmod ",
        "nvidia-smi ",
        CDI_QUERY,
        f"nvidia-ctk cdi generate --output={spec} --device-name-strategy=index",
        "nvidia-ctk cdi list",
    ]
    assert spec.read_text().startswith("cdiVersion")
    assert "CDI spec" in result.reason and "nvidia.com/gpu=all" in result.reason


def test_gpu_indices_map_to_cdi_devices(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present(CDI_DEVICES_TWO_GPUS)
    result = detect_gpu(True, cuda_visible_devices="1,0", cdi_spec=tmp_path / "nvidia.yaml")
    assert result.access == GpuAccess("cdi", ("nvidia.com/gpu=1", "nvidia.com/gpu=0"))
    assert docker_gpu_flags(result.access, "1,0") == ["--device", "nvidia.com/gpu=1", "--device", "nvidia.com/gpu=0"]


def test_gpu_index_missing_from_the_spec_falls_back(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present()  # one GPU: nvidia.com/gpu=0 and =all
    result = detect_gpu(True, cuda_visible_devices="0,1", cdi_spec=tmp_path / "nvidia.yaml")
    assert not result.available and result.access is None
    assert "no nvidia.com/gpu=1" in result.reason and "nvidia.com/gpu=0" in result.reason


def test_nvidia_ctk_missing_falls_back(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_toolkit_missing()
    result = detect_gpu(True, cdi_spec=tmp_path / "nvidia.yaml")
    assert not result.available and result.fl_gpu_available == "NO"
    assert "nvidia-ctk not found" in result.reason and "Container Toolkit" in result.reason


def test_nvidia_ctk_generate_failing_falls_back(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present()
    fake_bin.nvidia_ctk(generate_exit=1)
    spec = tmp_path / "nvidia.yaml"
    result = detect_gpu(True, cdi_spec=spec)
    assert not result.available
    assert "nvidia-ctk cdi generate failed (exit 1): ERROR: failed to initialize NVML" in result.reason
    assert "nvidia-ctk cdi list" not in fake_bin.calls()


def test_nvidia_ctk_writing_no_spec_falls_back(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present()
    fake_bin.add("nvidia-ctk", "exit 0")  # exits 0 but writes nothing
    result = detect_gpu(True, cdi_spec=tmp_path / "nvidia.yaml")
    assert not result.available and "wrote no" in result.reason


def test_nvidia_ctk_listing_nothing_falls_back(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present(devices=())
    result = detect_gpu(True, cdi_spec=tmp_path / "nvidia.yaml")
    assert not result.available and "has no nvidia.com/gpu=all" in result.reason and "it has: none" in result.reason


def test_docker_without_cdi_uses_the_nvidia_runtime(fake_bin: FakeBin, tmp_path: Path) -> None:
    """Docker 20.10 (a debian-12 image): no CDI, so --gpus through the nvidia runtime."""
    fake_bin.gpu_present()
    fake_bin.docker(cdi=False)
    result = detect_gpu(True, cdi_spec=tmp_path / "nvidia.yaml")
    assert result.available and result.access == GpuAccess("gpus")
    assert not any(call.startswith("nvidia-ctk") for call in fake_bin.calls())
    assert "docker info --format {{json .Runtimes}}" in fake_bin.calls()


def test_docker_without_cdi_or_nvidia_runtime_falls_back(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present()
    fake_bin.docker(cdi=False, nvidia_runtime=False)
    result = detect_gpu(True, cdi_spec=tmp_path / "nvidia.yaml")
    assert not result.available
    assert "CDI off" in result.reason and "no nvidia runtime" in result.reason


def test_docker_failing_falls_back(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present()
    fake_bin.add("docker", "exit 1")
    result = detect_gpu(True, cdi_spec=tmp_path / "nvidia.yaml")
    assert not result.available and "docker info failed" in result.reason


def test_no_driver_runs_neither_docker_nor_nvidia_ctk(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.gpu_present()
    fake_bin.gpu_module_missing()
    assert not detect_gpu(True, cdi_spec=tmp_path / "nvidia.yaml").available
    assert fake_bin.calls() == ["lsmod ", "nvidia-smi "]


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


def test_validate_script_runs_only_for_diagnostics_on_failure(fake_bin: FakeBin, tmp_path: Path) -> None:
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
    ("access", "devices", "flags"),
    [
        (GpuAccess("cdi", ("nvidia.com/gpu=all",)), "all", ["--device", "nvidia.com/gpu=all"]),
        (GpuAccess("cdi", ("nvidia.com/gpu=0",)), "0", ["--device", "nvidia.com/gpu=0"]),
        (GpuAccess("gpus"), "all", ["--gpus", "all"]),
        (GpuAccess("gpus"), "0,1", ["--gpus", "all", "-e", "CUDA_VISIBLE_DEVICES=0,1"]),
        (None, "0,1", []),
        (None, "all", []),
    ],
)
def test_docker_gpu_flags(access: GpuAccess | None, devices: str, flags: list[str]) -> None:
    assert docker_gpu_flags(access, devices) == flags


@pytest.mark.parametrize(
    ("devices", "names"),
    [("all", ("nvidia.com/gpu=all",)), ("0", ("nvidia.com/gpu=0",)), ("2,0", ("nvidia.com/gpu=2", "nvidia.com/gpu=0"))],
)
def test_wanted_cdi_devices(devices: str, names: tuple[str, ...]) -> None:
    assert wanted_cdi_devices(devices) == names


# --- through the boot sequence -------------------------------------------------------


def test_boot_gpu_present_adds_cdi_devices(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_bin.gpu_present(CDI_DEVICES_TWO_GPUS)
    fake_root.write_context({**GPU_CONTEXT, "FL_CUDA_VISIBLE_DEVICES": "0,1"})
    result = fake_root.boot()
    assert result.ok
    argv = fake_root.spec()["argv"]
    assert argv[5:9] == ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]
    assert "--gpus" not in argv and not any(a.startswith("CUDA_VISIBLE_DEVICES") for a in argv)
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in argv
    spec = fake_root.paths.cdi_spec
    assert f"nvidia-ctk cdi generate --output={spec} --device-name-strategy=index" in fake_bin.calls()
    assert spec.is_file()
    status = fake_root.status()["gpu"]
    assert status["FL_GPU_AVAILABLE"] == "YES" and status["route"] == "cdi"
    assert status["cdi_devices"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert "[step 5/7] gpu-detection: ok" in fake_root.log()
    assert "docker flags: --device nvidia.com/gpu=0 --device nvidia.com/gpu=1" in fake_root.log()


def test_boot_docker_without_cdi_adds_gpus_flags(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_bin.gpu_present()
    fake_bin.docker(cdi=False)
    fake_root.write_context({**GPU_CONTEXT, "FL_CUDA_VISIBLE_DEVICES": "0,1"})
    assert fake_root.boot().ok
    argv = fake_root.spec()["argv"]
    assert argv[5:9] == ["--gpus", "all", "-e", "CUDA_VISIBLE_DEVICES=0,1"]
    assert fake_root.status()["gpu"]["route"] == "gpus"


@pytest.mark.parametrize("setup", ["missing", "failing"])
def test_boot_nvidia_ctk_missing_or_failing_is_a_warning_and_cpu(
    fake_root: FakeRoot, fake_bin: FakeBin, setup: str
) -> None:
    fake_bin.gpu_present()
    if setup == "missing":
        (fake_bin.dir / "nvidia-ctk").unlink()
    else:
        fake_bin.nvidia_ctk(generate_exit=1)
    fake_bin.add("systemctl", "exit 0")
    fake_root.write_context(GPU_CONTEXT)
    result = fake_root.boot()
    assert result.ok  # a warning, not an error
    assert FALLBACK_WARNING in fake_root.log().splitlines()
    assert any(line.startswith("[step 5/7] gpu-detection: warning") for line in fake_root.log().splitlines())
    argv = fake_root.spec()["argv"]
    assert "--device" not in argv and "--gpus" not in argv
    assert not any(a.startswith("NVIDIA_DRIVER_CAPABILITIES") for a in argv)
    status = fake_root.status()
    assert status["gpu"]["FL_GPU_AVAILABLE"] == "NO" and status["supernode_will_start"] is True
    expected = "nvidia-ctk not found" if setup == "missing" else "nvidia-ctk cdi generate failed"
    assert expected in status["gpu"]["reason"]
    assert not any(call.startswith("systemctl") for call in fake_bin.calls())


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
def test_boot_gpu_missing_falls_back_to_cpu_with_warning(fake_root: FakeRoot, fake_bin: FakeBin, setup: str) -> None:
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
