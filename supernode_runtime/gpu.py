"""GPU detection boot step (plan 06-02, "Step 9: GPU Detection").

When FL_GPU_ENABLED=YES the GPU counts as available only if the ``nvidia``
kernel module is loaded (``lsmod`` has a line starting with ``nvidia ``) AND
``nvidia-smi`` exits 0 (the seeds' two checks) AND Docker knows the ``nvidia``
runtime (the Container Toolkit is installed and configured): without it
``docker run --gpus all`` fails with "could not select device driver", so a
missing toolkit must fall back to CPU like a missing GPU. Then the container gets ``--gpus all`` (plus
``-e CUDA_VISIBLE_DEVICES=<ids>`` unless FL_CUDA_VISIBLE_DEVICES is ``all``).
Otherwise the SuperNode runs on CPU: this is a WARNING, not a failure, and
FL_GPU_AVAILABLE=NO is recorded. When the checks fail and
``/opt/flower/scripts/validate-gpu.sh`` exists, it is run for diagnostics and
its output logged (it never changes the outcome).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from supernode_runtime.commands import Runner, run_command

FALLBACK_WARNING = "WARNING: GPU requested but not available, falling back to CPU"
LSMOD_TIMEOUT = 15.0
NVIDIA_SMI_TIMEOUT = 30.0
VALIDATE_TIMEOUT = 120.0

_NVIDIA_LINE = re.compile(r"^nvidia\s", re.MULTILINE)


@dataclass(frozen=True)
class GpuResult:
    """Outcome of GPU detection."""

    requested: bool
    available: bool
    reason: str
    diagnostics: str | None = None

    @property
    def fl_gpu_available(self) -> str:
        """Value published as FL_GPU_AVAILABLE."""
        return "YES" if self.available else "NO"


def nvidia_module_loaded(runner: Runner = run_command) -> tuple[bool, str]:
    """Run ``lsmod`` and look for the ``nvidia`` module."""
    result = runner(["lsmod"], LSMOD_TIMEOUT)
    if not result.ok:
        return False, f"lsmod failed (exit {result.returncode}): {result.stderr.strip()}"
    if _NVIDIA_LINE.search(result.stdout):
        return True, "nvidia module loaded"
    return False, "nvidia kernel module not loaded"


def nvidia_smi_ok(runner: Runner = run_command) -> tuple[bool, str]:
    """``nvidia-smi`` exits 0."""
    result = runner(["nvidia-smi"], NVIDIA_SMI_TIMEOUT)
    if result.ok:
        return True, "nvidia-smi responded"
    detail = (result.stderr or result.stdout).strip().splitlines()
    return False, f"nvidia-smi failed (exit {result.returncode})" + (
        f": {detail[0]}" if detail else ""
    )


DOCKER_TIMEOUT = 30.0


def docker_nvidia_runtime(runner: Runner = run_command) -> tuple[bool, str]:
    """``docker info`` lists the ``nvidia`` runtime (nvidia-ctk runtime configure ran)."""
    result = runner(["docker", "info", "--format", "{{json .Runtimes}}"], DOCKER_TIMEOUT)
    if not result.ok:
        return False, f"docker info failed (exit {result.returncode})"
    if '"nvidia"' in result.stdout:
        return True, "docker has the nvidia runtime"
    return False, "docker has no nvidia runtime (NVIDIA Container Toolkit missing or not configured)"


def run_validate_script(script: Path, runner: Runner = run_command) -> str | None:
    """Run the diagnostics script if it exists; return its combined output."""
    if not script.is_file():
        return None
    result = runner([str(script)], VALIDATE_TIMEOUT)
    output = (result.stdout + result.stderr).strip()
    return f"{script} exited {result.returncode}\n{output}".rstrip()


def detect_gpu(
    requested: bool, validate_script: Path | None = None, runner: Runner = run_command
) -> GpuResult:
    """The GPU detection step. Never raises for a missing GPU."""
    if not requested:
        return GpuResult(False, False, "GPU not requested (FL_GPU_ENABLED=NO)")
    checks = (nvidia_module_loaded(runner), nvidia_smi_ok(runner), docker_nvidia_runtime(runner))
    if all(ok for ok, _ in checks):
        return GpuResult(True, True, "; ".join(reason for _, reason in checks))
    reasons = "; ".join(reason for ok, reason in checks if not ok)
    diagnostics = run_validate_script(validate_script, runner) if validate_script else None
    return GpuResult(True, False, reasons, diagnostics)


PERSISTENCED_UNIT = "nvidia-persistenced.service"
SYSTEMCTL_TIMEOUT = 30.0


def start_persistence_daemon(runner: Runner = run_command) -> str:
    """Start nvidia-persistenced once a GPU is known to be there (it is not enabled at boot:
    on the many VMs without a GPU it would fail). Never fails the step; returns what happened."""
    result = runner(["systemctl", "start", "--no-block", PERSISTENCED_UNIT], SYSTEMCTL_TIMEOUT)
    if result.ok:
        return f"{PERSISTENCED_UNIT} started"
    detail = (result.stderr or result.stdout).strip().splitlines()
    return f"{PERSISTENCED_UNIT} not started (exit {result.returncode}" + (f": {detail[0]})" if detail else ")")


def docker_gpu_flags(gpu_available: bool, cuda_visible_devices: str) -> list[str]:
    """``DOCKER_GPU_FLAGS`` of the seeds, as argv items (empty without a GPU)."""
    if not gpu_available:
        return []
    flags = ["--gpus", "all"]
    if cuda_visible_devices != "all":
        flags += ["-e", f"CUDA_VISIBLE_DEVICES={cuda_visible_devices}"]
    return flags
