"""The SuperNode container launch: build info, ``docker run`` argv, launch spec.

The boot sequence writes the launch spec (JSON with the argv list) to
``/run/flower/supernode.json``; ``flower-supernode.service`` runs
``python3 -m supernode_runtime run-supernode``, which ``os.execvp``'s that argv
in the foreground so systemd tracks the ``docker run`` process. No shell is
involved anywhere, so values from the context are never interpreted.

flower-supernode flags used (:data:`SUPERNODE_FLAGS`; a unit test checks them
against ``flower-supernode --help`` of the pinned flwr): ``--superlink``,
``--insecure``, ``--root-certificates``, ``--isolation {subprocess,process}``,
``--node-config``, ``--max-retries``, ``--max-wait-time``. Every argv item is
checked against Linux's per-argument limit before the spec is written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supernode_runtime.config import EffectiveConfig
from supernode_runtime.fsutil import atomic_write
from supernode_runtime.gpu import GpuAccess, docker_gpu_flags
from supernode_runtime.validators import MAX_ARG_BYTES

CONTAINER_NAME = "flower-supernode"
CONTAINER_CA_PATH = "/app/certificates/ca.pem"
GUEST_CA_PATH = Path("/etc/flower/tls/ca.pem")
NVIDIA_CAPABILITIES = "compute,utility"
SPEC_VERSION = 1
# Always passed: the stock flower-supernode path is quiet too, not only the warm entrypoint
# (flwr reads FLWR_TELEMETRY_ENABLED in flwr/supercore/telemetry.py and
# FLWR_DISABLE_UPDATE_CHECK in flwr/supercore/update_check.py).
QUIET_ENV = ("FLWR_TELEMETRY_ENABLED=0", "FLWR_DISABLE_UPDATE_CHECK=1")

SUPERNODE_FLAGS = (
    "--superlink",
    "--insecure",
    "--root-certificates",
    "--isolation",
    "--node-config",
    "--max-retries",
    "--max-wait-time",
)

_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")


class LaunchError(Exception):
    """Build info or launch spec missing or malformed."""


@dataclass(frozen=True)
class BuildInfo:
    """Contents of ``/etc/flower/build.json`` written by the image build."""

    supernode_image: str
    flwr_version: str
    variant: str

    @classmethod
    def from_json(cls, data: Any) -> BuildInfo:
        if not isinstance(data, dict):
            raise LaunchError("build info is not a JSON object")
        image, version, variant = (
            data.get("supernode_image"),
            data.get("flwr_version"),
            data.get("variant"),
        )
        if not isinstance(image, str) or not _IMAGE_RE.fullmatch(image):
            raise LaunchError(f"build info: supernode_image {image!r} is not an image reference")
        if not isinstance(version, str) or not version:
            raise LaunchError(f"build info: flwr_version {version!r} is not a version")
        if variant not in ("cpu", "gpu"):
            raise LaunchError(f"build info: variant {variant!r} is not 'cpu' or 'gpu'")
        return cls(image, version, variant)

    def as_dict(self) -> dict[str, str]:
        return {
            "supernode_image": self.supernode_image,
            "flwr_version": self.flwr_version,
            "variant": self.variant,
        }


def load_build_info(path: Path) -> BuildInfo:
    """Read and check ``build.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise LaunchError(f"{path} is not valid JSON: {exc}") from exc
    return BuildInfo.from_json(data)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def container_env(config: EffectiveConfig, gpu: GpuAccess | None) -> list[str]:
    """The SuperNode container's environment, as ``NAME=VALUE`` items (``docker run -e``).

    FL_WARM_CLIENTAPP reaches the container's entrypoint (``python -m supernode_container.entrypoint``),
    which reads it from its environment."""
    env = [
        f"FLWR_LOG_LEVEL={config.log_level}",
        f"FL_GPU_MEMORY_FRACTION={_number(config.gpu_memory_fraction)}",
        "TF_FORCE_GPU_ALLOW_GROWTH=true",
        f"FL_WARM_CLIENTAPP={'YES' if config.warm_clientapp else 'NO'}",
        *QUIET_ENV,
    ]
    if gpu is not None:
        env.append(f"NVIDIA_DRIVER_CAPABILITIES={NVIDIA_CAPABILITIES}")
    return env


def supernode_args(config: EffectiveConfig, root_certificates: str = CONTAINER_CA_PATH) -> list[str]:
    """flower-supernode's options (:data:`SUPERNODE_FLAGS`) for `config`; `root_certificates` is
    where flower-supernode finds the CA (in the container: the bind-mounted CONTAINER_CA_PATH).
    ``config.superlink_address`` must be set (static or discovered)."""
    if not config.superlink_address:
        raise ValueError("no SuperLink address")
    args = ["--superlink", config.superlink_address]
    if config.tls_enabled:
        args += ["--root-certificates", root_certificates]
    else:
        args.append("--insecure")
    args += ["--isolation", config.isolation]
    if config.node_config:
        args += ["--node-config", config.node_config]
    if config.max_retries is not None:
        args += ["--max-retries", str(config.max_retries)]
    if config.max_wait_time is not None:
        args += ["--max-wait-time", _number(config.max_wait_time)]
    return args


def docker_run_argv(
    config: EffectiveConfig,
    gpu: GpuAccess | None,
    build_info: BuildInfo,
    ca_host_path: Path = GUEST_CA_PATH,
) -> list[str]:
    """The full ``docker run`` argv for the SuperNode container: its environment
    (:func:`container_env`), the CA mount, the image and flower-supernode's options
    (:func:`supernode_args`).

    ``gpu``: how the container gets the GPU (None: CPU). ``config.superlink_address`` must be
    set (static or discovered).
    """
    options = supernode_args(config)
    argv = ["docker", "run", "--rm", "--name", CONTAINER_NAME]
    argv += docker_gpu_flags(gpu, config.cuda_visible_devices)
    for item in container_env(config, gpu):
        argv += ["-e", item]
    if config.tls_enabled:
        argv += [
            "--mount",
            f"type=bind,source={ca_host_path},target={CONTAINER_CA_PATH},readonly",
        ]
    argv.append(build_info.supernode_image)
    argv += options
    check_argv_lengths(argv)
    return argv


def check_argv_lengths(argv: list[str]) -> None:
    """Raise :class:`LaunchError` when an item would make ``execve`` fail with E2BIG."""
    for index, item in enumerate(argv):
        size = len(item.encode("utf-8"))
        if size > MAX_ARG_BYTES:
            option = argv[index - 1] if index else "docker"
            raise LaunchError(
                f"argument {index} (after {option}) has {size} bytes; Linux accepts at most "
                f"{MAX_ARG_BYTES} per argument (MAX_ARG_STRLEN)"
            )


def write_launch_spec(path: Path, argv: list[str], extra: dict[str, Any]) -> None:
    """Atomically write the launch spec (mode 0644)."""
    doc = {"version": SPEC_VERSION, "argv": argv, **extra}
    atomic_write(path, json.dumps(doc, indent=2) + "\n", mode=0o644)


def read_launch_spec(path: Path) -> list[str]:
    """Read the launch spec and return its argv after checking its shape."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LaunchError(f"{path} does not exist (boot sequence did not finish)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise LaunchError(f"cannot read launch spec {path}: {exc}") from exc
    argv = doc.get("argv") if isinstance(doc, dict) else None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or argv[:2] != ["docker", "run"]:
        raise LaunchError(f"launch spec {path} has no valid docker run argv")
    return argv


def exec_supernode(spec_path: Path, execvp: Callable[[str, list[str]], object] = os.execvp) -> None:
    """Replace this process with ``docker run ...`` from the launch spec."""
    argv = read_launch_spec(spec_path)
    print(f"starting SuperNode container: {shlex.join(argv)}", flush=True)
    sys.stderr.flush()
    execvp(argv[0], argv)
