"""The gpu-detection boot step (step 5 of the boot sequence), GPU access through CDI.

When FL_GPU_ENABLED=YES the GPU counts as available only if the ``nvidia`` kernel module
is loaded (``lsmod`` has a line starting with ``nvidia ``) AND ``nvidia-smi`` exits 0 (the
driver answers) AND the container can be given the GPU:

- **CDI** (Docker >= 25 with ``"features": {"cdi": true}``, the default images): ``docker
  info`` reports CDI spec directories, ``nvidia-ctk cdi generate
  --output=/var/run/cdi/nvidia.yaml`` writes the spec for the GPUs of this boot (the build VM
  has no GPU, and ``/var/run/cdi`` is emptied at every boot:
  https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/cdi-support.html),
  and ``nvidia-ctk cdi list`` lists every device the container is to get:
  ``nvidia.com/gpu=all``, or ``nvidia.com/gpu=<i>`` for each index of
  FL_CUDA_VISIBLE_DEVICES. The container then gets ``--device <name>`` per device
  (https://docs.docker.com/reference/cli/dockerd/#enable-cdi-devices).
- **--gpus** (Docker without CDI, e.g. Debian 12's 20.10): Docker knows the ``nvidia``
  runtime (``nvidia-ctk runtime configure`` ran); the container gets ``--gpus all`` plus
  ``-e CUDA_VISIBLE_DEVICES=<ids>`` unless FL_CUDA_VISIBLE_DEVICES is ``all``.

Anything else (no toolkit, ``nvidia-ctk`` missing or failing, an index the spec does not
have) means the SuperNode runs on CPU: this is a WARNING, not a failure, and
FL_GPU_AVAILABLE=NO is recorded. When the checks fail and
``/opt/flower/scripts/validate-gpu.sh`` exists, it is run for diagnostics and its output
logged (it never changes the outcome).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from supernode_runtime.commands import NOT_FOUND, Runner, run_command

FALLBACK_WARNING = "WARNING: GPU requested but not available, falling back to CPU"
LSMOD_TIMEOUT = 15.0
NVIDIA_SMI_TIMEOUT = 30.0
VALIDATE_TIMEOUT = 120.0
DOCKER_TIMEOUT = 30.0
NVIDIA_CTK_TIMEOUT = 60.0

CDI_KIND = "nvidia.com/gpu"
# Where the spec goes in the guest: a directory dockerd reads CDI specs from by default
# (/etc/cdi and /var/run/cdi), and the file nvidia-cdi-refresh.service writes too.
CDI_SPEC = Path("/var/run/cdi/nvidia.yaml")
_CDI_RUN_DIRS = ("/var/run/cdi", "/run/cdi")  # /var/run is a symlink to /run

_NVIDIA_LINE = re.compile(r"^nvidia\s", re.MULTILINE)
_CDI_DEVICE = re.compile(rf"^\s*({re.escape(CDI_KIND)}=\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class GpuAccess:
    """How the container is given the GPU: ``cdi`` (``--device`` per CDI device name) or
    ``gpus`` (``--gpus all``, Docker's nvidia runtime)."""

    route: str
    cdi_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuResult:
    """Outcome of GPU detection."""

    requested: bool
    available: bool
    reason: str
    diagnostics: str | None = None
    access: GpuAccess | None = None

    @property
    def fl_gpu_available(self) -> str:
        """Value published as FL_GPU_AVAILABLE."""
        return "YES" if self.available else "NO"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f": {lines[0]}" if lines else ""


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
    return False, f"nvidia-smi failed (exit {result.returncode})" + _first_line(result.stderr or result.stdout)


def docker_nvidia_runtime(runner: Runner = run_command) -> tuple[bool, str]:
    """``docker info`` lists the ``nvidia`` runtime (nvidia-ctk runtime configure ran)."""
    result = runner(["docker", "info", "--format", "{{json .Runtimes}}"], DOCKER_TIMEOUT)
    if not result.ok:
        return False, f"docker info failed (exit {result.returncode})"
    if '"nvidia"' in result.stdout:
        return True, "docker has the nvidia runtime"
    return False, "docker has no nvidia runtime (NVIDIA Container Toolkit missing or not configured)"


def docker_cdi_enabled(runner: Runner = run_command) -> tuple[bool, str]:
    """dockerd reports the CDI spec directories it reads, which it does only with the ``cdi``
    feature on (Docker >= 25; the field does not exist before Docker 26's API 1.45, so an older
    daemon fails the template: no CDI either way). ``/var/run/cdi`` must be one of them."""
    result = runner(["docker", "info", "--format", "{{json .CDISpecDirs}}"], DOCKER_TIMEOUT)
    if not result.ok:
        return False, f"docker reports no CDI (docker info exit {result.returncode})"
    try:
        dirs = json.loads(result.stdout)
    except ValueError:
        dirs = None
    if not isinstance(dirs, list) or not dirs:
        return False, "docker has CDI off (no CDI spec directories)"
    if not any(str(d).rstrip("/") in _CDI_RUN_DIRS for d in dirs):
        return False, f"docker does not read CDI specs from /var/run/cdi (it reads {', '.join(map(str, dirs))})"
    return True, "docker has CDI on"


def wanted_cdi_devices(cuda_visible_devices: str) -> tuple[str, ...]:
    """The CDI device names for FL_CUDA_VISIBLE_DEVICES (``all`` or validated indices ``0,1``)."""
    if cuda_visible_devices == "all":
        return (f"{CDI_KIND}=all",)
    return tuple(f"{CDI_KIND}={index}" for index in cuda_visible_devices.split(","))


def generate_cdi_spec(spec: Path, wanted: tuple[str, ...], runner: Runner = run_command) -> tuple[bool, str]:
    """Write the CDI spec for this boot's GPUs and check it names every wanted device.

    ``nvidia-ctk cdi generate --output=FILE`` and ``nvidia-ctk cdi list`` as documented in
    https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/cdi-support.html;
    ``--device-name-strategy=index`` makes the names ``nvidia.com/gpu=<index>`` (and ``=all``),
    the indices nvidia-smi shows."""
    try:
        spec.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return False, f"cannot create {spec.parent}: {exc.strerror or exc}"
    generate = runner(
        ["nvidia-ctk", "cdi", "generate", f"--output={spec}", "--device-name-strategy=index"], NVIDIA_CTK_TIMEOUT
    )
    if generate.returncode == NOT_FOUND:
        return False, "nvidia-ctk not found (NVIDIA Container Toolkit not installed)"
    if not generate.ok:
        return False, f"nvidia-ctk cdi generate failed (exit {generate.returncode})" + _first_line(
            generate.stderr or generate.stdout
        )
    if not spec.is_file() or spec.stat().st_size == 0:
        return False, f"nvidia-ctk cdi generate wrote no {spec}"
    listed = runner(["nvidia-ctk", "cdi", "list"], NVIDIA_CTK_TIMEOUT)
    if not listed.ok:
        return False, f"nvidia-ctk cdi list failed (exit {listed.returncode})" + _first_line(
            listed.stderr or listed.stdout
        )
    found = set(_CDI_DEVICE.findall(listed.stdout + "\n" + listed.stderr))
    missing = [name for name in wanted if name not in found]
    if missing:
        have = ", ".join(sorted(found)) or "none"
        return False, f"the CDI spec has no {', '.join(missing)} (FL_CUDA_VISIBLE_DEVICES; it has: {have})"
    return True, f"CDI spec {spec} lists {', '.join(wanted)}"


def run_validate_script(script: Path, runner: Runner = run_command) -> str | None:
    """Run the diagnostics script if it exists; return its combined output."""
    if not script.is_file():
        return None
    result = runner([str(script)], VALIDATE_TIMEOUT)
    output = (result.stdout + result.stderr).strip()
    return f"{script} exited {result.returncode}\n{output}".rstrip()


def _container_access(
    cuda_visible_devices: str, cdi_spec: Path, runner: Runner
) -> tuple[GpuAccess | None, list[tuple[bool, str]]]:
    """How the container can get the GPU (None: it cannot), with the checks made."""
    cdi_on, cdi_reason = docker_cdi_enabled(runner)
    if cdi_on:
        wanted = wanted_cdi_devices(cuda_visible_devices)
        ok, reason = generate_cdi_spec(cdi_spec, wanted, runner)
        return (GpuAccess("cdi", wanted) if ok else None), [(True, cdi_reason), (ok, reason)]
    runtime_ok, runtime_reason = docker_nvidia_runtime(runner)
    if runtime_ok:
        return GpuAccess("gpus"), [(True, f"{cdi_reason}; {runtime_reason} (--gpus)")]
    return None, [(False, cdi_reason), (False, runtime_reason)]


def detect_gpu(
    requested: bool,
    validate_script: Path | None = None,
    runner: Runner = run_command,
    *,
    cuda_visible_devices: str = "all",
    cdi_spec: Path = CDI_SPEC,
) -> GpuResult:
    """The GPU detection step. Never raises for a missing GPU."""
    if not requested:
        return GpuResult(False, False, "GPU not requested (FL_GPU_ENABLED=NO)")
    checks = [nvidia_module_loaded(runner), nvidia_smi_ok(runner)]
    access = None
    if all(ok for ok, _ in checks):  # no driver: nothing for Docker or nvidia-ctk to use
        access, more = _container_access(cuda_visible_devices, cdi_spec, runner)
        checks += more
    if access is not None:
        return GpuResult(True, True, "; ".join(reason for _, reason in checks), access=access)
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


def docker_gpu_flags(access: GpuAccess | None, cuda_visible_devices: str) -> list[str]:
    """The ``docker run`` options that give the container the GPU (empty without one).

    CDI: one ``--device`` per device name; the container sees exactly those GPUs, numbered
    from 0, so no CUDA_VISIBLE_DEVICES (the host's index 1 is the container's 0). ``--gpus``:
    every GPU, narrowed by CUDA_VISIBLE_DEVICES
    (https://docs.docker.com/engine/containers/resource_constraints/#gpu)."""
    if access is None:
        return []
    if access.route == "cdi":
        return [item for device in access.cdi_devices for item in ("--device", device)]
    flags = ["--gpus", "all"]
    if cuda_visible_devices != "all":
        flags += ["-e", f"CUDA_VISIBLE_DEVICES={cuda_visible_devices}"]
    return flags
