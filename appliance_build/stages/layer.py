"""The system layer: the base after the steps that only need the base and the container.

Steps numbered below 50 (the Docker engine check, `docker import` of the SuperNode
container) run in a Packer VM booted from the base; the resulting disk is cached by a hash
of everything those steps see (the base and container keys, the scripts, finalize.sh, the
template, their environment, the disk settings). A build whose changes are all in the later
steps (runtime, GPU, clean-up) boots this disk instead of redoing the import under emulation.

The cached disk is a standalone qcow2 (flattened, uncompressed): it never depends on the
base entry it was made from. Its build user, key and cloud-init state are removed by the
same finalize.sh as the final image, so the next build VM boots it as a first boot.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import cache
from ..cache import file_sha256
from ..config import ImageConfig
from ..paths import PROVISION_DIR, TEMPLATES_DIR
from ..progress import run, say
from .container import ContainerImage
from .render import PackerRun

RECIPE_VERSION = 1
FINALIZE = PROVISION_DIR / "finalize.sh"
TEMPLATE = TEMPLATES_DIR / "packer" / "image.pkr.hcl.j2"


@dataclass(frozen=True)
class SystemLayer:
    disk: Path  # qcow2 the configure run starts from
    key: str
    cached: bool
    facts: dict[str, Any]


def inputs(image: ImageConfig, run: PackerRun, base_key: str, container_key: str) -> dict[str, Any]:
    steps = [p for phase in run.phases for p in phase.scripts]
    return {
        "recipe": RECIPE_VERSION,
        "base": base_key,
        "container": container_key,
        "steps": {p.name: file_sha256(p) for p in steps},
        "finalize": file_sha256(FINALIZE),
        "template": file_sha256(TEMPLATE),
        "env": run.env,
        "disk": {"size_mib": image.disk.size_mib, "machine": image.disk.machine, "firmware": image.disk.firmware},
    }


def cache_entry(image: ImageConfig, run: PackerRun, base_key: str, container_key: str) -> tuple[str, Path]:
    """The inputs hash of this layer and its cache directory (which may not exist yet)."""
    key = cache.inputs_hash(inputs(image, run, base_key, container_key))
    return key, cache.entry_dir("layer", f"{image.base.provider}-{image.variant}", key)


def prepare_upload(run: PackerRun, container: ContainerImage) -> None:
    """What the layer's steps read from /var/tmp/flower-build: the container rootfs and its
    `docker import --change` lines, and finalize.sh (the run's shutdown command)."""
    shutil.rmtree(run.upload_dir, ignore_errors=True)
    (run.upload_dir / "container").mkdir(parents=True)
    target = run.upload_dir / "container" / "rootfs.tar.gz"
    try:
        os.link(container.rootfs, target)
    except OSError:
        shutil.copy2(container.rootfs, target)
    (run.upload_dir / "container" / "import-changes.txt").write_text("\n".join(container.import_changes()) + "\n")
    shutil.copy2(FINALIZE, run.upload_dir / "finalize.sh")


def ensure(
    image: ImageConfig,
    run: PackerRun,
    base_key: str,
    container: ContainerImage,
    packer_build: Callable[[PackerRun, Path], dict[str, float]],
    logs: Path,
) -> SystemLayer:
    """The cached layer for these inputs, built first if missing: `packer_build(run, log)` runs
    Packer for `run` and returns its per-provisioner seconds. Parallel builds share the entry."""
    key, entry = cache_entry(image, run, base_key, container.key)

    def load(path: Path) -> SystemLayer | None:
        if (path / "disk.qcow2").is_file() and (path / "layer.json").is_file():
            return SystemLayer(path / "disk.qcow2", key, True, json.loads((path / "layer.json").read_text()))
        return None

    def build(scratch: Path) -> None:
        started = time.monotonic()
        try:
            prepare_upload(run, container)
            seconds = packer_build(run, logs / "packer-layer.log")
            say(f"flattening the layer into the cache ({entry.name})")
            run_started = time.monotonic()
            run_convert(run.output_disk, scratch / "disk.qcow2", logs / "packer-layer.log")
            facts = {
                "base_key": base_key,
                "container_key": container.key,
                "steps": [p.name for phase in run.phases for p in phase.scripts],
                "provisioners_s": seconds,
                "flatten_s": round(time.monotonic() - run_started, 1),
                "build_seconds": round(time.monotonic() - started, 1),
            }
            (scratch / "layer.json").write_text(json.dumps(facts, indent=2) + "\n")
        finally:
            shutil.rmtree(run.output_dir, ignore_errors=True)
            shutil.rmtree(run.upload_dir, ignore_errors=True)

    layer, reused = cache.reuse_or_build(entry, f"system layer {entry.name}", load=load, build=build)
    return replace(layer, cached=reused)


def run_convert(source: Path, dest: Path, log: Path) -> None:
    """A standalone, uncompressed copy (zero clusters dropped) of Packer's output disk."""
    run(["qemu-img", "convert", "-O", "qcow2", str(source), str(dest)], log, label="qemu-img convert (layer)")
