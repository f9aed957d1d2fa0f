"""The Flower SuperNode container image, built offline on the host.

No registry is needed: flwr and its dependencies are downloaded here as
wheels, every one checked against the --hash pins of the lock file
(images/locks/), installed into a minimal Debian root made by mmdebstrap, and
exported as a root-filesystem tarball that the guest `docker import`s. The
result is cached by a hash of the lock file, the recipe and the helper code.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import cache, host_tools
from ..config import FlowerConfig
from ..paths import IMAGES_DIR, RUNTIME_DIR
from ..progress import run, say

SUITE = "bookworm"
PYTHON = "3.11"  # Debian 12's python3: the wheels must match it
RECIPE_VERSION = 1
VENV = "/opt/flwr"
APP_UID = 49999
DEVICE_HELPER = RUNTIME_DIR / "flower_device.py"
# manylinux tags a Debian 12 (glibc 2.36) x86_64 python can load
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64",
    "linux_x86_64",
]


@dataclass(frozen=True)
class ContainerImage:
    rootfs: Path  # gzip'd tar of the container's root filesystem
    tag: str  # what the appliance runs, e.g. flwr-supernode:1.41.0
    key: str
    cached: bool
    facts: dict[str, Any]

    def import_changes(self) -> list[str]:
        """Dockerfile instructions `docker import --change` applies to the rootfs."""
        return [
            f'ENTRYPOINT ["{VENV}/bin/flower-supernode"]',
            f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV PYTHONUNBUFFERED=1",
            "WORKDIR /app",
            "USER app",
        ]


def inputs(flower: FlowerConfig, mirror: str) -> dict[str, Any]:
    return {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "mirror": mirror,
        "python": PYTHON,
        "lock_sha256": cache.file_sha256(IMAGES_DIR / flower.lock),
        "device_helper_sha256": cache.file_sha256(DEVICE_HELPER) if DEVICE_HELPER.exists() else "",
    }


def download_wheels(lock: Path, dest: Path, log: Path) -> None:
    """Fetch every wheel of `lock`, refusing any file whose hash is not pinned there."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    run(
        ["python3", "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
         "--require-hashes", "--only-binary=:all:", "--implementation", "cp",
         "--python-version", PYTHON, *platforms, "-r", str(lock), "-d", str(dest)],
        log, label="pip download (hash-checked wheels)", timeout=1800,
    )  # fmt: skip


def ensure(flower: FlowerConfig, mirror: str, logs: Path) -> ContainerImage:
    """The cached container rootfs for this lock and recipe, built first if missing (one build
    at a time per entry: parallel builds wait for the first and reuse it)."""
    host_tools.require("container")
    key = cache.inputs_hash(inputs(flower, mirror))
    entry = cache.entry_dir("container", f"flwr-{flower.version}", key)

    def load(path: Path) -> ContainerImage | None:
        if (path / "rootfs.tar.gz").is_file() and (path / "container.json").is_file():
            facts = json.loads((path / "container.json").read_text())
            return ContainerImage(path / "rootfs.tar.gz", flower.image_tag, key, True, facts)
        return None

    image, reused = cache.reuse_or_build(
        entry, "SuperNode container rootfs", load=load, build=lambda scratch: _build(flower, mirror, scratch, logs)
    )
    return replace(image, cached=reused)


def _build(flower: FlowerConfig, mirror: str, scratch: Path, logs: Path) -> None:
    log = logs / "container.log"
    started = time.monotonic()
    wheels = scratch / "wheels"
    download_wheels(IMAGES_DIR / flower.lock, wheels, log)
    say(f"building the SuperNode container rootfs ({len(list(wheels.iterdir()))} wheels)")
    hooks = [
        '--customize-hook=mkdir -p "$1/tmp/wheels"',
        f"--customize-hook=copy-in {wheels}/. /tmp/wheels",
        # mmdebstrap splits a special hook's arguments like a shell (Text::ParseWords)
        f"--customize-hook=upload {shlex.quote(str(IMAGES_DIR / flower.lock))} /tmp/requirements.txt",
        f'--customize-hook=chroot "$1" python3 -m venv {VENV}',
        f'--customize-hook=chroot "$1" {VENV}/bin/pip install --no-index --no-cache-dir '
        f"--disable-pip-version-check --require-hashes --find-links /tmp/wheels "
        f"-r /tmp/requirements.txt",
        f'--customize-hook=chroot "$1" {VENV}/bin/pip freeze --all > "$1/tmp/freeze.txt"',
        f"--customize-hook=copy-out /tmp/freeze.txt {scratch}",
        f'--customize-hook=chroot "$1" useradd --uid {APP_UID} --create-home --shell /usr/sbin/nologin app',
        '--customize-hook=mkdir -p "$1/app" && chown 49999:49999 "$1/app"',
        '--customize-hook=rm -rf "$1/tmp/wheels" "$1/tmp/requirements.txt" "$1/tmp/freeze.txt" '
        '"$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
    ]
    if DEVICE_HELPER.exists():
        site = f"{VENV}/lib/python{PYTHON}/site-packages/flower_device.py"
        hooks.insert(-1, f"--customize-hook=upload {DEVICE_HELPER} {site}")
    tar = scratch / "rootfs.tar"
    run(
        ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
         "--include=python3,python3-venv,ca-certificates,tini",
         "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
         "--dpkgopt=path-exclude=/usr/share/locale/*",
         *hooks, SUITE, str(tar), f"deb {mirror} {SUITE} main"],
        log, label="mmdebstrap (container rootfs)", timeout=1800,
    )  # fmt: skip
    run(["gzip", "-1", str(tar)], log, label="gzip rootfs")
    freeze = dict(line.split("==", 1) for line in (scratch / "freeze.txt").read_text().splitlines() if "==" in line)
    facts = {
        "tag": flower.image_tag,
        "flwr": freeze.get("flwr", "?"),
        "python_packages": freeze,
        "base": f"debian {SUITE} (mmdebstrap minbase)",
        "rootfs_bytes": (scratch / "rootfs.tar.gz").stat().st_size,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (scratch / "container.json").write_text(json.dumps(facts, indent=2))
    for wheel in wheels.iterdir():
        wheel.unlink()
    wheels.rmdir()
