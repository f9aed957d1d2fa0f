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
from pathlib import Path
from typing import Any

from . import cache, plan
from .artifacts import (
    AcceleratorRecord,
    Artifact,
    BaseRecord,
    Builder,
    ContainerRecord,
    Contents,
    GpuRecord,
    ImageArtifacts,
    LayerRecord,
    Manifest,
    ToolkitRecord,
)
from .cache import file_sha256
from .config import ImageConfig
from .errors import BuildError
from .paths import (
    PROVISION_DIR,
    REPO,
    RUNTIME_DIR,
    SCRIPTS_DIR,
    TEMPLATES_DIR,
)
from .progress import StageTimer, say
from .stages import base as base_stage
from .stages import container as container_stage
from .stages import finalize, packer
from .stages import layer as layer_stage
from .stages.render import PackerRun
from .stages.toolkit import ToolkitPlan
from .vm import accel as accel_probe


def _fresh_logs(out: ImageArtifacts) -> None:
    if out.logs.exists():
        shutil.rmtree(out.logs_previous, ignore_errors=True)
        out.logs.rename(out.logs_previous)
    out.logs.mkdir(parents=True)


@contextlib.contextmanager
def _only_a_complete_image_replaces(out: ImageArtifacts) -> Iterator[None]:
    """The new qcow2, .sha256 and manifest are written as `*.new` and swapped in only when the
    whole build succeeded; on any failure or Ctrl-C the previous image, its checksum, manifest
    and test-results/ stay exactly as they were, and only the logs of this attempt are added."""
    try:
        yield
        _swap_in(out)
    except BaseException:
        for path in out.results:
            finalize.staged(path).unlink(missing_ok=True)
        out.inventory.unlink(missing_ok=True)
        kept = "the previous image is unchanged" if out.qcow2.exists() else "no image was written"
        say(f"build failed: {kept}; logs of this attempt in {out.logs}")
        raise
    finally:
        shutil.rmtree(out.packer_output, ignore_errors=True)
        shutil.rmtree(out.upload, ignore_errors=True)
        shutil.rmtree(out.layer_packer_output, ignore_errors=True)
        shutil.rmtree(out.layer_upload, ignore_errors=True)


def _swap_in(out: ImageArtifacts) -> None:
    """Replace the previous results by the new ones. The old test results describe the old file,
    so they move aside to test-results.previous/."""
    if out.test_results.exists():
        shutil.rmtree(out.test_results_previous, ignore_errors=True)
        out.test_results.rename(out.test_results_previous)
    for path in out.results:  # the image first, so a manifest never names a file not there yet
        finalize.staged(path).rename(path)


def prepare_upload(image: ImageConfig, container_tag: str, out: ImageArtifacts, toolkit: ToolkitPlan | None) -> None:
    """The tree the configure run uploads before its steps (the layer has its own)."""
    shutil.rmtree(out.upload, ignore_errors=True)
    out.upload.mkdir(parents=True)
    shutil.copytree(
        RUNTIME_DIR, out.upload / "supernode_runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
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


def toolkit_record(toolkit: ToolkitPlan, inventory: dict[str, Any]) -> ToolkitRecord:
    """The toolkit as 65-nvidia-container-toolkit.sh recorded it in the guest (gpu-toolkit.json)."""
    if toolkit.source == "absent":
        return ToolkitRecord("absent", "absent", absent_reason=toolkit.reason or "building without it was allowed")
    found = inventory.get("gpu_toolkit")
    if not isinstance(found, dict) or found.get("toolkit") != "present" or not found.get("version"):
        raise BuildError(
            f"NVIDIA Container Toolkit from {toolkit.source}: the build VM recorded {found!r} in "
            "/etc/flower/gpu-toolkit.json, not an installed version (see logs/packer.log)"
        )
    return ToolkitRecord(
        "installed",
        toolkit.source,  # type: ignore[arg-type]  # nvidia-repo | mirror | local here
        version=str(found["version"]),
        detail=str(found.get("detail") or "") or None,
    )


def gpu_manifest(
    image: ImageConfig, base: Any, inventory: dict[str, Any], toolkit: ToolkitPlan | None
) -> GpuRecord | None:
    """What a GPU image carries: driver (route, version, module, checks) and toolkit status."""
    if image.gpu is None or toolkit is None:
        return None
    driver = inventory.get("gpu_driver", {})
    record = image.gpu.driver_record(str(driver.get("driver_version") or ""))
    return GpuRecord(
        driver_branch=image.gpu.driver_branch,
        driver_install=image.gpu.driver_install,  # type: ignore[arg-type]  # checked by config
        kernel_modules=image.gpu.kernel_modules,  # type: ignore[arg-type]  # open | proprietary
        kernel_module_package=image.gpu.kernel_module_package,
        toolkit=toolkit_record(toolkit, inventory),
        driver_source=record.driver_source,  # type: ignore[arg-type]  # nvidia-repo | debian, checked by config
        support_ends=record.support_ends or None,  # from nvidia_branches.toml (NVIDIA's lifecycle page)
        support_status=record.support_status,  # type: ignore[arg-type]  # as of the build
        support_note=image.gpu.support_note or None,
        module_license=driver.get("module_license"),  # what 60-nvidia-driver.sh found in the module
        driver_version=record.driver_version or None,
        kernel=driver.get("kernel"),
        module_path=driver.get("module_path"),
        driver_checks=driver.get("checks") or {},
        driver_packages=driver.get("packages") or {},
        held_packages=tuple(driver.get("held") or ()),
        driver_install_s=base.facts.get("timings_s", {}).get("extra_packages_in_chroot"),
    )


def _inventory(out: ImageArtifacts) -> dict[str, Any]:
    """What provision/inventory.sh recorded in the guest (Packer downloads it after the build)."""
    if not out.inventory.is_file():
        raise BuildError(f"the Packer build wrote no {out.inventory} (see {out.logs / 'packer.log'})")
    try:
        data = json.loads(out.inventory.read_text())
    except json.JSONDecodeError as exc:
        raise BuildError(f"{out.inventory}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BuildError(f"{out.inventory}: expected a JSON object")
    return data


def build_image(
    name: str,
    *,
    packer_target: str | None = None,
    toolkit_source: str | None = None,
    allow_missing_toolkit: bool = False,
    offline: bool = False,
) -> Manifest:
    request = plan.check(
        name,
        packer_target=packer_target,
        toolkit_source=toolkit_source,
        allow_missing_toolkit=allow_missing_toolkit,
        offline=offline,
    )
    image, target, toolkit = request.image, request.target, request.toolkit
    out = ImageArtifacts.for_image(name)
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
            accel = accel_probe.for_disk(base.disk)
        with timer.stage("supernode container"):
            container = container_stage.ensure(image.flower, image.base, out.logs)
        if (base.key, container.key) != (runs.base_key, runs.container_key):  # plan.runs() derives them too
            raise BuildError(
                f"cache keys drifted: base {base.key} / {runs.base_key}, "
                f"container {container.key} / {runs.container_key}"
            )
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
            artifact = finalize.compress(
                runs.configure.output_disk, out.qcow2, out.logs / "compress.log", image.disk.compression
            )
        inventory = _inventory(out)
        manifest = Manifest(
            image=name,
            variant=image.variant,  # type: ignore[arg-type]  # cpu | gpu, checked by config
            description=image.description,
            built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            builder=Builder(
                host=platform.node(),
                packer=target.label,
                accelerator=AcceleratorRecord(accel.name, accel.cpu, accel.reason),  # type: ignore[arg-type]
                firmware=image.disk.firmware,  # type: ignore[arg-type]  # bios | uefi, checked by config
                machine=image.disk.machine,  # type: ignore[arg-type]  # pc | q35, checked by config
            ),
            base=BaseRecord.from_stage(image.base.provider, base.key, base.cached, base.facts),
            container=ContainerRecord.from_stage(
                container.key, container.cached, {"tag": container.tag, **container.facts}
            ),
            contents=Contents.from_inventory(inventory, out.inventory),
            inputs=input_hashes(image),
            gpu=gpu_manifest(image, base, inventory, toolkit),
            layer=None
            if layer is None
            else LayerRecord(
                key=layer.key,
                cached=layer.cached,
                steps=tuple(layer.facts.get("steps", ())),
                # of the run that made the cached layer (a reused layer: an earlier build's)
                provisioners_s=layer.facts.get("provisioners_s", {}),
                build_s=layer.facts.get("build_seconds"),
            ),
            provisioners_s={"configure": provisioners},
            stages_s=timer.durations,
            total_s=round(time.monotonic() - started, 1),
            artifact=Artifact(**artifact),
        )
        manifest.write(finalize.staged(out.manifest))
    say(
        f"done: {out.qcow2} ({manifest.artifact.file_bytes / 2**20:.0f} MiB, virtual "
        f"{manifest.artifact.virtual_bytes / 2**30:.0f} GiB) in {manifest.total_s:.0f} s"
    )
    return manifest
