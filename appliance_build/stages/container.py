"""The Flower SuperNode container image, built offline on the host.

No registry is needed: flwr and its dependencies are downloaded here as
wheels, every one checked against the --hash pins of the lock file
(images/locks/), installed into a minimal Debian root made by mmdebstrap, and
exported as a root-filesystem tarball that the guest `docker import`s. The
root is the Debian suite of the image's base (appliance_build/suites.py: bookworm
with Python 3.11 for debian-12, trixie with Python 3.13 for debian-13), so the
lock must be resolved for that suite's Python. The result is cached by a hash of
the lock file, the suite, the recipe and the helper code.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import cache, host_tools
from ..config import BaseConfig, FlowerConfig
from ..errors import BuildError
from ..paths import IMAGES_DIR, REPO, RUNTIME_DIR
from ..progress import run, say
from ..suites import DebianSuite, container_suite

# 2: the root also gets the suite's -updates and -security (security_mirror)
# 3: the "flwr runs" check moved here from the build VM (host speed, chroot into the root)
RECIPE_VERSION = 3
VENV = "/opt/flwr"
APP_UID = 49999
DEVICE_HELPER = RUNTIME_DIR / "flower_device.py"
# The warm ClientApp launcher and the entrypoint that supervises it (supernode_container/README.md)
LAUNCHER_PACKAGE = REPO / "supernode_container"
ENTRYPOINT = ["/usr/bin/tini", "--", f"{VENV}/bin/python", "-m", "supernode_container.entrypoint"]


def launcher_sources() -> list[Path]:
    return sorted(LAUNCHER_PACKAGE.glob("*.py"))


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
            f"ENTRYPOINT {json.dumps(ENTRYPOINT)}",
            f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV PYTHONUNBUFFERED=1",
            # an offline appliance: no telemetry, no update check (flwr/supercore/telemetry.py,
            # flwr/supercore/update_check.py), for every flwr process of the container
            "ENV FLWR_TELEMETRY_ENABLED=0",
            "ENV FLWR_DISABLE_UPDATE_CHECK=1",
            "WORKDIR /app",
            "USER app",
        ]


def inputs(flower: FlowerConfig, base: BaseConfig) -> dict[str, Any]:
    suite = container_suite(base.provider)
    return {
        "recipe": RECIPE_VERSION,
        "suite": suite.codename,
        "mirror": base.mirror,
        "security_mirror": base.security_mirror,
        "python": suite.python,
        "platforms": suite.manylinux_platforms,
        "lock_sha256": cache.file_sha256(IMAGES_DIR / flower.lock),
        "device_helper_sha256": cache.file_sha256(DEVICE_HELPER) if DEVICE_HELPER.exists() else "",
        "launcher_sha256": {p.name: cache.file_sha256(p) for p in launcher_sources()},
        "entrypoint": ENTRYPOINT,
    }


def sources(base: BaseConfig, suite: DebianSuite) -> list[str]:
    """The container root's apt sources: the suite with its point-release and security updates
    (python3 and libssl3 in it serve the SuperNode's TLS connection)."""
    return [
        f"deb {base.mirror} {suite.codename} main",
        f"deb {base.mirror} {suite.codename}-updates main",
        f"deb {base.security_mirror} {suite.codename}-security main",
    ]


def download_wheels(lock: Path, suite: DebianSuite, dest: Path, log: Path) -> None:
    """Fetch every wheel of `lock` for `suite`'s CPython on x86_64, refusing any file whose
    hash is not pinned there."""
    platforms = [arg for p in suite.manylinux_platforms for arg in ("--platform", p)]
    run(
        [
            "python3",
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            suite.python,
            *platforms,
            "-r",
            str(lock),
            "-d",
            str(dest),
        ],
        log,
        label="pip download (hash-checked wheels)",
        timeout=1800,
    )


def ensure(flower: FlowerConfig, base: BaseConfig, logs: Path) -> ContainerImage:
    """The cached container rootfs for this lock, suite and recipe, built first if missing (one
    build at a time per entry: parallel builds wait for the first and reuse it)."""
    host_tools.require("container")
    key = cache.inputs_hash(inputs(flower, base))
    suite = container_suite(base.provider)
    entry = cache.entry_dir("container", f"flwr-{flower.version}-{suite.codename}", key)

    def load(path: Path) -> ContainerImage | None:
        if (path / "rootfs.tar.gz").is_file() and (path / "container.json").is_file():
            facts = json.loads((path / "container.json").read_text())
            return ContainerImage(path / "rootfs.tar.gz", flower.image_tag, key, True, facts)
        return None

    image, reused = cache.reuse_or_build(
        entry, "SuperNode container rootfs", load=load, build=lambda scratch: _build(flower, base, scratch, logs)
    )
    return replace(image, cached=reused)


def _build(flower: FlowerConfig, base: BaseConfig, scratch: Path, logs: Path) -> None:
    log = logs / "container.log"
    started = time.monotonic()
    suite = container_suite(base.provider)
    wheels = scratch / "wheels"
    download_wheels(IMAGES_DIR / flower.lock, suite, wheels, log)
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
        # The check the appliance depends on, run here at host speed instead of in the build VM:
        # the venv imports flwr and flower-supernode starts (its --help). The version it prints is
        # compared with the definition's in Python below (no value in this shell text).
        f'--customize-hook=chroot "$1" {VENV}/bin/python -c "import flwr; print(flwr.__version__)" '
        '> "$1/tmp/flwr-version"',
        f'--customize-hook=chroot "$1" {VENV}/bin/flower-supernode --help > /dev/null',
        f"--customize-hook=copy-out /tmp/flwr-version {scratch}",
        f'--customize-hook=chroot "$1" useradd --uid {APP_UID} --create-home --shell /usr/sbin/nologin app',
        '--customize-hook=mkdir -p "$1/app" && chown 49999:49999 "$1/app"',
        '--customize-hook=rm -rf "$1/tmp/wheels" "$1/tmp/requirements.txt" "$1/tmp/freeze.txt" '
        '"$1/tmp/flwr-version" "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
    ]
    site = f"{VENV}/lib/python{suite.python}/site-packages"
    if DEVICE_HELPER.exists():
        hooks.insert(-1, f"--customize-hook=upload {shlex.quote(str(DEVICE_HELPER))} {site}/flower_device.py")
    hooks[-1:-1] = [
        f'--customize-hook=mkdir -p "$1{site}/supernode_container"',
        *(
            f"--customize-hook=upload {shlex.quote(str(p))} {site}/supernode_container/{p.name}"
            for p in launcher_sources()
        ),
        # the container user cannot write .pyc files: compile every module now and check each one
        f'--customize-hook=chroot "$1" {VENV}/bin/python -m supernode_container.pyc_check --compile {site}',
    ]
    tar = scratch / "rootfs.tar"
    run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            "--include=python3,python3-venv,ca-certificates,tini",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            *hooks,
            suite.codename,
            str(tar),
            *sources(base, suite),
        ],
        log,
        label="mmdebstrap (container rootfs)",
        timeout=1800,
    )
    run(["gzip", "-1", str(tar)], log, label="gzip rootfs")
    runs = (scratch / "flwr-version").read_text().strip()
    (scratch / "flwr-version").unlink()
    if runs != flower.version:
        raise BuildError(
            f"the container's venv imports flwr {runs!r}, the definition wants {flower.version} "
            f"(flower.version; lock {flower.lock}): re-resolve the lock for this version"
        )
    freeze = dict(line.split("==", 1) for line in (scratch / "freeze.txt").read_text().splitlines() if "==" in line)
    facts = {
        "tag": flower.image_tag,
        "flwr": freeze.get("flwr", "?"),
        "python_packages": freeze,
        "base": f"debian {suite.codename} (mmdebstrap minbase)",
        "python": suite.python,
        "flwr_runs": runs,  # what `import flwr` in the root printed; flower-supernode --help ran
        "rootfs_bytes": (scratch / "rootfs.tar.gz").stat().st_size,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (scratch / "container.json").write_text(json.dumps(facts, indent=2))
    for wheel in wheels.iterdir():
        wheel.unlink()
    wheels.rmdir()
