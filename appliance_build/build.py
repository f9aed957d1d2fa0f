"""An image build as a straight list of stages.

    definition -> base -> accelerator -> container -> upload tree -> render
               -> packer validate -> packer build -> compress -> manifest

Everything external is held by a context manager (the build key pair, the
Packer process group, the partial output), so a failure or Ctrl-C leaves no
artifact at the final path and no QEMU or Packer running; the logs stay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import cache, config, host_tools, nvidia_driver
from .cache import file_sha256
from .config import ImageConfig
from .errors import ConfigError
from .paths import (
    PROVISION_DIR,
    REPO,
    RUNTIME_DIR,
    SCRIPTS_DIR,
    TEMPLATES_DIR,
    build_root,
    cache_root,
)
from .progress import StageTimer, say, warn
from .stages import base as base_stage
from .stages import container as container_stage
from .stages import finalize, packer, render
from .stages import toolkit as toolkit_stage
from .stages.toolkit import ToolkitPlan
from .vm import accel as accel_probe
from .vm.firmware import Uefi, find_uefi


@dataclass(frozen=True)
class Outputs:
    """Where one image's results go: build/<image>/..."""

    root: Path
    name: str

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def qcow2(self) -> Path:
        return self.root / f"{self.name}.qcow2"

    @property
    def sha256(self) -> Path:
        return self.root / f"{self.name}.qcow2.sha256"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def test_results(self) -> Path:
        return self.root / "test-results"

    @property
    def results(self) -> tuple[Path, Path, Path]:
        """What a successful build replaces, in the order it is swapped in."""
        return (self.qcow2, self.sha256, self.manifest)

    @property
    def upload(self) -> Path:
        return self.root / "flower-build"  # uploaded as /var/tmp/flower-build

    @property
    def packer_output(self) -> Path:
        return self.root / "packer-output"

    @classmethod
    def for_image(cls, name: str) -> Outputs:
        return cls(build_root() / name, name)


def _fresh_logs(out: Outputs) -> None:
    if out.logs.exists():
        previous = out.root / "logs.previous"
        shutil.rmtree(previous, ignore_errors=True)
        out.logs.rename(previous)
    out.logs.mkdir(parents=True)


@contextlib.contextmanager
def _only_a_complete_image_replaces(out: Outputs) -> Iterator[None]:
    """The new qcow2, .sha256 and manifest are written as `*.new` and swapped in only when the
    whole build succeeded; on any failure or Ctrl-C the previous image, its checksum, manifest
    and test-results/ stay exactly as they were, and only the logs of this attempt are added."""
    try:
        yield
        _swap_in(out)
    except BaseException:
        for path in out.results:
            finalize.staged(path).unlink(missing_ok=True)
        (out.root / "inventory.json").unlink(missing_ok=True)
        kept = "the previous image is unchanged" if out.qcow2.exists() else "no image was written"
        say(f"build failed: {kept}; logs of this attempt in {out.logs}")
        raise
    finally:
        shutil.rmtree(out.packer_output, ignore_errors=True)
        shutil.rmtree(out.upload, ignore_errors=True)


def _swap_in(out: Outputs) -> None:
    """Replace the previous results by the new ones. The old test results describe the old file,
    so they move aside to test-results.previous/."""
    if out.test_results.exists():
        previous = out.root / "test-results.previous"
        shutil.rmtree(previous, ignore_errors=True)
        out.test_results.rename(previous)
    for path in out.results:  # the image first, so a manifest never names a file not there yet
        finalize.staged(path).rename(path)


def find_probe_kernel(disk: Path) -> Path | None:
    """A kernel to boot for the accelerator probe: the base's own (next to a base disk,
    or any cached debian base for a built image), else the host's."""
    candidates = [disk.parent / "vmlinuz", *sorted((cache_root() / "base").glob("*/vmlinuz"))]
    candidates += sorted(Path("/boot").glob("vmlinuz-*"))
    return next((c for c in candidates if c.is_file()), None)


def choose_accelerator(base_disk: Path) -> accel_probe.Accelerator:
    kernel = find_probe_kernel(base_disk)
    if kernel is None:
        return accel_probe.Accelerator("tcg", "max", "no kernel available to probe KVM with")
    return accel_probe.choose(kernel)


def prepare_upload(
    image: ImageConfig, container: container_stage.ContainerImage, out: Outputs, toolkit: ToolkitPlan | None
) -> None:
    """The tree Packer uploads to the VM before the provisioning steps run."""
    shutil.rmtree(out.upload, ignore_errors=True)
    (out.upload / "container").mkdir(parents=True)
    target = out.upload / "container" / "rootfs.tar.gz"
    try:
        os.link(container.rootfs, target)
    except OSError:
        shutil.copy2(container.rootfs, target)
    (out.upload / "container" / "import-changes.txt").write_text("\n".join(container.import_changes()) + "\n")
    shutil.copytree(RUNTIME_DIR, out.upload / "supernode_runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    shutil.copy2(PROVISION_DIR / "finalize.sh", out.upload / "finalize.sh")
    (out.upload / "scripts").mkdir()
    for script in SCRIPTS_DIR.glob("*.sh"):
        shutil.copy2(script, out.upload / "scripts" / script.name)
    if toolkit is not None:
        toolkit.stage_into(out.upload)
        (out.upload / "provision").mkdir()
        shutil.copy2(PROVISION_DIR / "65-nvidia-container-toolkit.sh", out.upload / "provision")
    for spec in image.files:
        dest = out.upload / "files" / spec.dest.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / spec.source, dest)
    build_info = {
        "image": image.name,
        "variant": image.variant,
        "flwr_version": image.flower.version,
        "supernode_image": container.tag,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out.upload / "build.json").write_text(json.dumps(build_info, indent=2) + "\n")


def input_hashes(image: ImageConfig) -> dict[str, Any]:
    def tree(paths: list[Path]) -> dict[str, str]:
        return {str(p.relative_to(REPO)): file_sha256(p) for p in sorted(paths) if p.is_file()}

    return {
        "definition": tree(list(image.source_files)),
        "provision": tree([*image.provision_paths, PROVISION_DIR / "finalize.sh", PROVISION_DIR / "inventory.sh"]),
        "templates": tree(list(TEMPLATES_DIR.rglob("*.j2"))),
        "runtime": tree([p for p in RUNTIME_DIR.rglob("*") if "__pycache__" not in p.parts]),
        "flower_lock": file_sha256(REPO / "images" / image.flower.lock),
    }


def _firmware(image: ImageConfig) -> Uefi | None:
    return find_uefi() if image.disk.firmware == "uefi" else None


def gpu_manifest(image: ImageConfig, base: Any, inventory: dict[str, Any], plan: ToolkitPlan | None) -> dict[str, Any]:
    """What a GPU image carries: driver (route, version, module, checks) and toolkit status."""
    if image.gpu is None or plan is None:
        return {}
    driver = inventory.get("gpu_driver", {})
    toolkit: Any = "absent" if plan.source == "absent" else inventory.get("gpu_toolkit", {"version": plan.version})
    return {
        "driver_branch": image.gpu.driver_branch,
        "driver_support": image.gpu.support_note or None,  # NVIDIA's support status of the branch
        "driver_install": image.gpu.driver_install,
        "kernel_modules": image.gpu.kernel_modules,  # open | proprietary (the definition's choice)
        "kernel_module_package": image.gpu.kernel_module_package,
        "module_license": driver.get("module_license"),  # what 60-nvidia-driver.sh found in the module
        "driver_version": driver.get("driver_version"),
        "kernel": driver.get("kernel"),
        "module_path": driver.get("module_path"),
        "driver_checks": driver.get("checks"),
        "driver_packages": driver.get("packages"),
        "held_packages": driver.get("held"),
        "driver_install_seconds_in_bootstrap_chroot": base.facts.get("timings_s", {}).get("extra_packages_in_chroot"),
        "toolkit": toolkit,
        "toolkit_source": plan.source,
        "toolkit_absent_reason": plan.reason or None,
    }


def _checked_request(
    name: str, packer_target: str | None, toolkit_source: str | None, allow_missing_toolkit: bool,
    offline: bool = False,
) -> tuple[ImageConfig, render.PackerTarget, ToolkitPlan | None]:  # fmt: skip
    """Everything that can fail fast, before anything under build/<image>/ is touched: the
    definition, the flags, the host tools, the Packer target, NVIDIA's driver repository
    (bounded preflight) and the toolkit source. --offline: the driver from Debian, the toolkit
    local (--toolkit-source local:DIR) or absent and recorded."""
    image = config.load(name)
    if image.gpu is None and (toolkit_source or allow_missing_toolkit or offline):
        raise ConfigError(f"{name} is not a GPU image: --toolkit-source/--allow-missing-toolkit/--offline do not apply")
    if offline:
        image = config.offline(image)
    if image.gpu is not None and toolkit_source:
        image = replace(image, gpu=toolkit_stage.parse_override(toolkit_source, image.gpu))
    stages = ["base", "container", "packer", "finalize"] + (["gpu"] if image.gpu is not None else [])
    host_tools.require(*stages)
    target = render.PackerTarget.parse(packer_target) if packer_target else render.detect_packer()
    _firmware(image)  # a UEFI image needs OVMF on this host
    plan = None
    if image.gpu is not None:
        if image.base.nvidia_driver is not None:
            nvidia_driver.preflight(image.base.nvidia_driver, timeout=nvidia_driver.PREFLIGHT_SECONDS)
        if image.gpu.support_note:
            warn(f"{name}: {image.gpu.support_note}; `nox -s publish` refuses it without --allow-unsupported-driver")
        plan = toolkit_stage.resolve(image.gpu, allow_missing=allow_missing_toolkit, offline=offline)
    return image, target, plan


def build_image(
    name: str, *, packer_target: str | None = None, toolkit_source: str | None = None,
    allow_missing_toolkit: bool = False, offline: bool = False,
) -> dict[str, Any]:  # fmt: skip
    image, target, plan = _checked_request(name, packer_target, toolkit_source, allow_missing_toolkit, offline)
    out = Outputs.for_image(name)
    out.root.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    started = time.monotonic()
    # build/<image>.lock: a second build of the same image waits for the first
    with cache.locked(out.root, f"build of {name}"), _only_a_complete_image_replaces(out):
        _fresh_logs(out)
        say(f"building {name}: {image.description}")
        say(f"packer: {target.label}")
        if plan is not None:
            say(f"NVIDIA Container Toolkit: {plan.source}" + (f" ({plan.reason})" if plan.reason else ""))
        with timer.stage("base image"):
            base = base_stage.ensure(image.base, out.logs)
        with timer.stage("accelerator probe"):
            accel = choose_accelerator(base.disk)
        with timer.stage("supernode container"):
            container = container_stage.ensure(image.flower, image.base, out.logs)
        with timer.stage("upload tree"):
            prepare_upload(image, container, out, plan)
        with packer.build_keypair(name) as key:
            with timer.stage("render"):
                rendered = render.render(
                    image, out.root, target=target, accel=accel, base_disk=base.disk,
                    base_checksum="none", upload_dir=out.upload, ssh_public_key=key.public,
                    firmware=_firmware(image), extra_env=plan.env() if plan else None,
                )  # fmt: skip
            with timer.stage("packer validate"):
                packer.validate(rendered, target, key, out.logs / "packer.log")
            with timer.stage("packer build"):
                packer.build(rendered, out.packer_output, key, out.logs / "packer.log")
        with timer.stage("compress"):
            artifact = finalize.compress(out.packer_output / f"{name}.qcow2", out.qcow2, out.logs / "compress.log")
        inventory_path = out.root / "inventory.json"
        inventory = json.loads(inventory_path.read_text()) if inventory_path.exists() else {}
        manifest = {
            "image": name,
            "variant": image.variant,
            "description": image.description,
            "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "builder": {
                "host": platform.node(),
                "packer": target.label,
                "accelerator": {"name": accel.name, "cpu": accel.cpu, "reason": accel.reason},
                "firmware": image.disk.firmware,
                "machine": image.disk.machine,
            },
            "base": {
                "provider": image.base.provider,
                "key": base.key,
                "cached": base.cached,
                **{k: v for k, v in base.facts.items() if k != "packages"},
            },
            "container": {
                "tag": container.tag,
                "key": container.key,
                "cached": container.cached,
                **container.facts,
            },
            "contents": inventory,
            "inputs": input_hashes(image),
            "gpu": gpu_manifest(image, base, inventory, plan),
            "stages_s": timer.durations,
            "total_s": round(time.monotonic() - started, 1),
            "artifact": artifact,
        }
        finalize.staged(out.manifest).write_text(json.dumps(manifest, indent=2) + "\n")
    say(
        f"done: {out.qcow2} ({artifact['file_bytes'] / 2**20:.0f} MiB, virtual "
        f"{artifact['virtual_bytes'] / 2**30:.0f} GiB) in {manifest['total_s']:.0f} s"
    )
    return manifest
