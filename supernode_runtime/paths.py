"""Every filesystem path the runtime reads or writes, built from one root prefix.

In the guest the root is ``/``; tests build ``Paths.from_root(tmp_path)`` so the
whole boot sequence runs against a fake directory tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Guest paths (root '/'), relative to the root prefix.
CONTEXT_DEVICE = "dev/disk/by-label/CONTEXT"
PREMOUNTED_CONTEXT_DIRS = ("run/one-context", "mnt/context")
OVERRIDE_FILE = "etc/flower/context.override"
BUILD_INFO = "etc/flower/build.json"
TLS_CA = "etc/flower/tls/ca.pem"
RUN_DIR = "run/flower"
LAUNCH_SPEC = "run/flower/supernode.json"
STATUS_JSON = "run/flower/status.json"
STATUS_TEXT = "run/flower/status.txt"
MOTD_FILE = "run/motd.d/50-flower-supernode"
VALIDATE_GPU_SCRIPT = "opt/flower/scripts/validate-gpu.sh"
# The CDI spec of this boot's GPUs (dockerd reads /var/run/cdi; emptied at every boot).
CDI_SPEC = "var/run/cdi/nvidia.yaml"


@dataclass(frozen=True)
class Paths:
    """Locations used by the runtime. Build with :meth:`from_root`."""

    root: Path
    context_device: Path
    premounted_context_dirs: tuple[Path, ...]
    override_file: Path
    build_info: Path
    tls_ca: Path
    run_dir: Path
    launch_spec: Path
    status_json: Path
    status_text: Path
    motd_file: Path
    validate_gpu_script: Path
    cdi_spec: Path

    @classmethod
    def from_root(cls, root: str | Path = "/") -> Paths:
        """All paths below ``root`` (``/`` in the guest)."""
        base = Path(root)
        return cls(
            root=base,
            context_device=base / CONTEXT_DEVICE,
            premounted_context_dirs=tuple(base / d for d in PREMOUNTED_CONTEXT_DIRS),
            override_file=base / OVERRIDE_FILE,
            build_info=base / BUILD_INFO,
            tls_ca=base / TLS_CA,
            run_dir=base / RUN_DIR,
            launch_spec=base / LAUNCH_SPEC,
            status_json=base / STATUS_JSON,
            status_text=base / STATUS_TEXT,
            motd_file=base / MOTD_FILE,
            validate_gpu_script=base / VALIDATE_GPU_SCRIPT,
            cdi_spec=base / CDI_SPEC,
        )
