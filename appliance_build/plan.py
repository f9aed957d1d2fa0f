"""The front half of a build, shared by `build` and `render`: everything decided before a VM.

    check()  the definition, the flags, the host tools, the Packer target and the toolkit
             source: everything that can fail fast, before build/<image>/ is touched
    runs()   the Packer runs of the build: "layer" (cached: base + steps below 50) and
             "configure" (every build: the layer + the remaining steps)
    write()  their HCL and cloud-init seeds, and the image's OpenNebula VM template

`nox -s render` stops after write(); a build goes on to boot what write() rendered, so the
files `render` writes are the files a build with the same flags would run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from . import cache, config, host_tools, nvidia_driver
from .artifacts import ImageArtifacts
from .config import ImageConfig
from .errors import ConfigError
from .opennebula_templates import render_vm_template
from .progress import warn
from .stages import base as base_stage
from .stages import container as container_stage
from .stages import layer as layer_stage
from .stages import render
from .stages import toolkit as toolkit_stage
from .stages.render import PackerRun, PackerTarget
from .stages.toolkit import ToolkitPlan
from .vm.firmware import Uefi, find_uefi


@dataclass(frozen=True)
class Request:
    image: ImageConfig
    target: PackerTarget
    toolkit: ToolkitPlan | None
    firmware: Uefi | None


def check(
    name: str,
    *,
    packer_target: str | None = None,
    toolkit_source: str | None = None,
    allow_missing_toolkit: bool = False,
    offline: bool = False,
    stages: tuple[str, ...] = ("base", "container", "packer", "finalize"),
) -> Request:
    """Everything that can fail fast, before anything under build/<image>/ is touched: the
    definition, the flags, the host tools, the Packer target, NVIDIA's driver repository
    (bounded preflight) and the toolkit source. `offline`: the driver from Debian, the toolkit
    local (--toolkit-source local:DIR) or absent and recorded."""
    image = config.load(name)
    if image.gpu is None and (toolkit_source or allow_missing_toolkit or offline):
        raise ConfigError(f"{name} is not a GPU image: --toolkit-source/--allow-missing-toolkit/--offline do not apply")
    if offline:
        image = config.offline(image)
    if image.gpu is not None and toolkit_source:
        image = replace(image, gpu=toolkit_stage.parse_override(toolkit_source, image.gpu))
    host_tools.require(*stages, *(["gpu"] if image.gpu is not None else []))
    target = PackerTarget.parse(packer_target) if packer_target else render.detect_packer()
    firmware = find_uefi() if image.disk.firmware == "uefi" else None  # a UEFI image needs OVMF here
    toolkit = None
    if image.gpu is not None:
        if image.base.nvidia_driver is not None:
            nvidia_driver.preflight(image.base.nvidia_driver, timeout=nvidia_driver.PREFLIGHT_SECONDS)
        if image.gpu.support_note:
            warn(f"{name}: {image.gpu.support_note}; `nox -s publish` refuses it without --allow-unsupported-driver")
        toolkit = toolkit_stage.resolve(image.gpu, allow_missing=allow_missing_toolkit, offline=offline)
    return Request(image, target, toolkit, firmware)


@dataclass(frozen=True)
class Runs:
    layer: PackerRun | None  # None: the definition has no step below 50, the base is the layer
    configure: PackerRun
    base_key: str
    container_key: str
    layer_key: str | None


def runs(request: Request, out: ImageArtifacts) -> Runs:
    """The build's Packer runs, with the cache paths of the disks each one starts from."""
    image = request.image
    base_key, base_entry = base_stage.cache_entry(image.base)
    container_key = cache.inputs_hash(container_stage.inputs(image.flower, image.base))
    env = render.provision_env(image, image.flower.image_tag)
    layer: PackerRun | None = None
    layer_key: str | None = None
    start = base_entry / "disk.qcow2"
    steps = render.layer_steps(image)
    if steps:
        layer = PackerRun(
            name="layer",
            source=f"{image.name}-layer",
            disk=start,
            work=out.layer,
            output_dir=out.layer_packer_output,
            vm_name=f"{image.name}-layer.qcow2",
            console_log=out.logs / "packer-layer-console.log",
            phases=(render.Phase("system layer steps", steps),),
            env=env,
        )
        layer_key, layer_entry = layer_stage.cache_entry(image, layer, base_key, container_key)
        start = layer_entry / "disk.qcow2"
    extra = request.toolkit.env() if request.toolkit else None
    configure = PackerRun(
        name="configure",
        source=image.name,
        disk=start,
        work=out.root,
        output_dir=out.packer_output,
        vm_name=f"{image.name}.qcow2",
        console_log=out.logs / "packer-console.log",
        phases=render.configure_phases(image, out.inventory),
        env=render.provision_env(image, image.flower.image_tag, extra),
    )
    return Runs(layer, configure, base_key, container_key, layer_key)


def write(request: Request, planned: Runs, out: ImageArtifacts, ssh_public_key: str) -> list[Path]:
    """Render every run's HCL and seed, and the OpenNebula VM template; the files written."""
    written: list[Path] = []
    for run in (planned.layer, planned.configure):
        if run is None:
            continue
        rendered = render.render(
            request.image,
            run,
            target=request.target,
            ssh_public_key=ssh_public_key,
            firmware=request.firmware,
            instance_id=render.new_instance_id(),
        )
        written += [rendered.hcl, rendered.user_data, rendered.meta_data]
    vm_template = out.root / "opennebula" / f"{request.image.name}.tmpl"
    vm_template.parent.mkdir(parents=True, exist_ok=True)
    vm_template.write_text(render_vm_template(request.image.variant, request.image.name))
    return [*written, vm_template]
