"""An image build as a straight list of stages.

    request (plan.check) -> base -> accelerator -> container -> render (plan.write)
      -> system layer (cached: Packer runs the steps below 50 on the base)
      -> upload tree -> packer validate -> packer build (the other steps, on the layer)
      -> compress -> manifest

Everything external is held by a context manager (the build key pair, the
Packer process group, the partial output), so a failure or Ctrl-C leaves no
artifact at the final path and no QEMU or Packer running; the logs stay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cache, plan
from .cache import file_sha256
from .config import ImageConfig
from .errors import BuildError
from .paths import (
    PROVISION_DIR,
    REPO,
    RUNTIME_DIR,
    SCRIPTS_DIR,
    TEMPLATES_DIR,
    build_root,
    cache_root,
)
from .progress import StageTimer, say
from .stages import base as base_stage
from .stages import container as container_stage
from .stages import finalize, packer
from .stages import layer as layer_stage
from .stages.render import PackerRun
from .stages.toolkit import ToolkitPlan
from .vm import accel as accel_probe


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
    def layer(self) -> Path:
        return self.root / "layer"  # the system layer run's HCL, seed and upload tree

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.json"

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
        shutil.rmtree(out.layer / "packer-output", ignore_errors=True)
        shutil.rmtree(out.layer / "flower-build", ignore_errors=True)


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


def prepare_upload(image: ImageConfig, container_tag: str, out: Outputs, toolkit: ToolkitPlan | None) -> None:
    """The tree the configure run uploads before its steps (the layer has its own)."""
    shutil.rmtree(out.upload, ignore_errors=True)
    out.upload.mkdir(parents=True)
    shutil.copytree(RUNTIME_DIR, out.upload / "supernode_runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    shutil.copy2(PROVISION_DIR / "finalize.sh", out.upload / "finalize.sh")
    (out.upload / "scripts").mkdir()
    for script in SCRIPTS_DIR.glob("*.sh"):
        shutil.copy2(script, out.upload / "scripts" / script.name)
    if toolkit is not None:
        toolkit.stage_into(out.upload)
    for spec in image.files:
        dest = out.upload / "files" / spec.dest.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / spec.source, dest)
    build_info = {
        "image": image.name,
        "variant": image.variant,
        "flwr_version": image.flower.version,
        "supernode_image": container_tag,
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


def gpu_manifest(
    image: ImageConfig, base: Any, inventory: dict[str, Any], toolkit: ToolkitPlan | None
) -> dict[str, Any]:
    """What a GPU image carries: driver (route, version, module, checks) and toolkit status."""
    if image.gpu is None or toolkit is None:
        return {}
    driver = inventory.get("gpu_driver", {})
    carried: Any = (
        "absent" if toolkit.source == "absent" else inventory.get("gpu_toolkit", {"version": toolkit.version})
    )
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
        "toolkit": carried,
        "toolkit_source": toolkit.source,
        "toolkit_absent_reason": toolkit.reason or None,
    }


def build_image(
    name: str, *, packer_target: str | None = None, toolkit_source: str | None = None,
    allow_missing_toolkit: bool = False,
) -> dict[str, Any]:  # fmt: skip
    request = plan.check(name, packer_target=packer_target, toolkit_source=toolkit_source,
                         allow_missing_toolkit=allow_missing_toolkit)  # fmt: skip
    image, target, toolkit = request.image, request.target, request.toolkit
    out = Outputs.for_image(name)
    out.root.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    started = time.monotonic()
    # build/<image>.lock: a second build of the same image waits for the first
    with cache.locked(out.root, f"build of {name}"), _only_a_complete_image_replaces(out):
        _fresh_logs(out)
        say(f"building {name}: {image.description}")
        say(f"packer: {target.label}")
        if toolkit is not None:
            say(f"NVIDIA Container Toolkit: {toolkit.source}" + (f" ({toolkit.reason})" if toolkit.reason else ""))
        runs = plan.runs(request, out)
        with timer.stage("base image"):
            base = base_stage.ensure(image.base, out.logs)
        with timer.stage("accelerator probe"):
            accel = choose_accelerator(base.disk)
        with timer.stage("supernode container"):
            container = container_stage.ensure(image.flower, image.base, out.logs)
        if (base.key, container.key) != (runs.base_key, runs.container_key):  # plan.runs() derives them too
            raise BuildError(f"cache keys drifted: base {base.key} / {runs.base_key}, "
                             f"container {container.key} / {runs.container_key}")  # fmt: skip
        variables = {"accelerator": accel.name, "cpu_model": accel.cpu}
        with packer.build_keypair(name) as key:

            def packer_run(run: PackerRun, log: Path) -> dict[str, float]:
                packer.validate(run.hcl, target, key, log, variables)
                return packer.build(run.hcl, run.output_dir, key, log, variables)

            with timer.stage("render"):
                plan.write(request, runs, out, key.public)
            layer = None
            if runs.layer is not None:
                with timer.stage("system layer"):
                    layer = layer_stage.ensure(image, runs.layer, base.key, container, packer_run, out.logs)
            with timer.stage("upload tree"):
                prepare_upload(image, container.tag, out, toolkit)
            with timer.stage("packer build"):
                provisioners = packer_run(runs.configure, out.logs / "packer.log")
        with timer.stage("compress"):
            artifact = finalize.compress(runs.configure.output_disk, out.qcow2, out.logs / "compress.log",
                                         image.disk.compression)  # fmt: skip
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
            "gpu": gpu_manifest(image, base, inventory, toolkit),
            "layer": None if layer is None else {
                "key": layer.key,
                "cached": layer.cached,
                "steps": layer.facts.get("steps", []),
                # of the run that made the cached layer (a reused layer: an earlier build's)
                "provisioners_s": layer.facts.get("provisioners_s", {}),
                "build_seconds": layer.facts.get("build_seconds"),
            },
            "provisioners_s": {"configure": provisioners},
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
