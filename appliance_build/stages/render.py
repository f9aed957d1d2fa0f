"""Render the Packer HCL and the cloud-init NoCloud seed for one image.

Jinja2 with StrictUndefined: a template that names something the renderer
does not provide is an error, never an empty string in the output.

Two Packer targets:
  legacy  Packer 1.6 (Debian 12's package): the QEMU builder is built in; no
          `packer {}` block with required_plugins; UEFI via `-bios` OVMF.fd.
  plugin  Packer >= 1.9 with the qemu plugin (`packer init`): required_plugins,
          efi_boot / efi_firmware_code / efi_firmware_vars.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from ..config import ImageConfig
from ..errors import BuildError, ConfigError
from ..paths import PROVISION_DIR, TEMPLATES_DIR
from ..suites import base_packages
from ..vm.firmware import Uefi

BUILD_USER = "flbuild"
UPLOAD_DEST = "/var/tmp/flower-build"
INVENTORY_GUEST = "/var/tmp/flower-inventory.json"
CLEANUP_FROM = 90  # steps numbered 90 and up run after the inventory


@dataclass(frozen=True)
class PackerTarget:
    version: tuple[int, int, int]

    @property
    def plugin(self) -> bool:
        return self.version >= (1, 7, 0)

    @property
    def label(self) -> str:
        v = ".".join(map(str, self.version))
        return f"Packer {v} ({'qemu plugin' if self.plugin else 'built-in qemu builder'})"

    @classmethod
    def parse(cls, text: str) -> PackerTarget:
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not m:
            raise ConfigError(f"packer target {text!r}: expected a version like 1.6.6 or 1.11")
        target = cls((int(m[1]), int(m[2]), int(m[3] or 0)))
        if (1, 7, 0) <= target.version < (1, 9, 0) or target.version < (1, 6, 0):
            raise ConfigError(f"packer target {text!r}: supported are 1.6.x (built-in qemu) and >= 1.9 (qemu plugin)")
        return target


def detect_packer() -> PackerTarget:
    packer = shutil.which("packer")
    if packer is None:
        raise BuildError("packer is not installed (Debian/Ubuntu: apt-get install packer)")
    out = subprocess.run([packer, "version"], capture_output=True, text=True, check=False)
    return PackerTarget.parse(out.stdout)


def _escape_nonprintable(char: str) -> str:
    """\\uNNNN or \\UNNNNNNNN: the escapes HCL and YAML double-quoted strings share."""
    code = ord(char)
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


HCL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def hcl_string(value: object) -> str:
    """`value` as one HCL quoted string literal, whatever it holds.

    HCL native syntax (hcl/hclsyntax/spec.md, "Template Expressions"): a quoted template
    takes the escapes \\\\ \\" \\n \\r \\t \\uNNNN \\UNNNNNNNN, and `$${` / `%%{` stand for a
    literal `${` / `%{` (which would otherwise start an interpolation or a directive).
    Every other character that is not printable is written as a \\u escape, so the result is
    one line that cannot end the string, the attribute or the block it is in.
    """
    out = []
    for char in str(value):
        if char in HCL_ESCAPES:
            out.append(HCL_ESCAPES[char])
        elif not char.isprintable():
            out.append(_escape_nonprintable(char))
        else:
            out.append(char)
    text = "".join(out).replace("${", "$${").replace("%{", "%%{")
    return f'"{text}"'


YAML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def yaml_string(value: object) -> str:
    """`value` as one YAML double-quoted scalar (YAML 1.1 and 1.2, §5.7 escaped characters):
    backslash, quote and every character that is not printable escaped, so it stays one
    line and one string (never a number, a boolean, a comment or a new key)."""
    out = []
    for char in str(value):
        if char in YAML_ESCAPES:
            out.append(YAML_ESCAPES[char])
        elif not char.isprintable():
            out.append(_escape_nonprintable(char))
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["hcl_string"] = hcl_string
    env.filters["yaml_string"] = yaml_string
    return env


@dataclass(frozen=True)
class Phase:
    """One shell provisioner: a run of numbered steps (or the inventory)."""

    title: str
    scripts: tuple[Path, ...]
    args: str = ""
    download: dict[str, str] | None = None

    @property
    def execute_command(self) -> str:
        """Packer's shell provisioner command; {{ .Vars }} are the environment_vars, each
        written by Packer as KEY='value' with the value's single quotes escaped."""
        return "sudo env {{ .Vars }} /bin/bash '{{ .Path }}'" + self.args


LAYER_BEFORE = 50  # steps numbered below this build the cached system layer (stages/layer.py)


def layer_steps(image: ImageConfig) -> tuple[Path, ...]:
    """The steps that only need the base and the container (engine, container import): their
    result is cached as a disk layer, so a build that changes nothing here starts from it."""
    return tuple(s for s in image.provision_paths if int(s.name[:2]) < LAYER_BEFORE)


def configure_phases(image: ImageConfig, inventory_dest: Path) -> tuple[Phase, ...]:
    """The steps of every build, on top of the layer: runtime and GPU steps, then the inventory
    (downloaded), then clean-up and hardening."""
    steps = [s for s in image.provision_paths if int(s.name[:2]) >= LAYER_BEFORE]
    before = tuple(s for s in steps if int(s.name[:2]) < CLEANUP_FROM)
    after = tuple(s for s in steps if int(s.name[:2]) >= CLEANUP_FROM)
    out = [Phase("provisioning steps", before)] if before else []
    out.append(
        Phase(
            "inventory for manifest.json",
            (PROVISION_DIR / "inventory.sh",),
            args=f" {INVENTORY_GUEST}",
            download={"source": INVENTORY_GUEST, "destination": str(inventory_dest)},
        )
    )
    if after:
        out.append(Phase("clean-up and hardening", after))
    return tuple(out)


@dataclass(frozen=True)
class PackerRun:
    """One Packer build: the disk it boots, the steps it runs, where its files go.

    A build has up to two: "layer" (base + steps below LAYER_BEFORE, cached by its inputs) and
    "configure" (the layer + the other steps: what every build runs)."""

    name: str
    source: str  # the Packer source name
    disk: Path  # the disk it starts from
    work: Path  # its HCL (packer/), seed (seed/) and upload tree (flower-build/)
    output_dir: Path
    vm_name: str
    console_log: Path
    phases: tuple[Phase, ...]
    env: dict[str, str]

    @property
    def hcl(self) -> Path:
        return self.work / "packer" / f"{self.source}.pkr.hcl"

    @property
    def seed_dir(self) -> Path:
        return self.work / "seed"

    @property
    def upload_dir(self) -> Path:
        return self.work / PurePosixPath(UPLOAD_DEST).name

    @property
    def output_disk(self) -> Path:
        return self.output_dir / self.vm_name


@dataclass(frozen=True)
class Rendered:
    hcl: Path
    user_data: Path
    meta_data: Path


def provision_env(image: ImageConfig, container_tag: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every provisioning script (values are validated config, no quotes)."""
    gpu = (
        {"FLOWER_NVIDIA_BRANCH": image.gpu.driver_branch, "FLOWER_NVIDIA_KERNEL_MODULES": image.gpu.kernel_modules}
        if image.gpu
        else {}
    )
    return {
        **gpu,
        **(extra or {}),
        "FLOWER_IMAGE_NAME": image.name,
        "FLOWER_VARIANT": image.variant,
        "FLWR_VERSION": image.flower.version,
        "FLOWER_SUPERNODE_IMAGE": container_tag,
        "FLOWER_REGISTRY_IMAGE": image.flower.registry_image,
        # what 10-docker-engine.sh checks is installed (installs, on a cloud image): the engine + `packages`
        "FLOWER_BASE_PACKAGES": " ".join(base_packages(image.base.provider, image.packages)),
        "FLOWER_UPLOAD": UPLOAD_DEST,
    }


def render(
    image: ImageConfig,
    run: PackerRun,
    *,
    target: PackerTarget,
    ssh_public_key: str,
    firmware: Uefi | None,
    instance_id: str,
) -> Rendered:
    """Write the run's <work>/packer/<source>.pkr.hcl and <work>/seed/{user-data,meta-data}."""
    if image.disk.firmware == "uefi" and firmware is None:
        raise BuildError(f"{image.name}: disk.firmware is uefi but no UEFI firmware was found")
    env = environment()
    run.seed_dir.mkdir(parents=True, exist_ok=True)
    run.hcl.parent.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "image": image,
        "run": run,
        "target": target,
        "upload_dest": UPLOAD_DEST,
        "upload_parent": str(PurePosixPath(UPLOAD_DEST).parent),
        "build_user": BUILD_USER,
        "ssh_public_key": ssh_public_key,
        "firmware": firmware,
        "instance_id": instance_id,
    }
    run.hcl.write_text(env.get_template("packer/image.pkr.hcl.j2").render(values))
    user_data = run.seed_dir / "user-data"
    user_data.write_text(env.get_template("cloud-init/user-data.j2").render(values))
    meta_data = run.seed_dir / "meta-data"
    meta_data.write_text(env.get_template("cloud-init/meta-data.j2").render(values))
    return Rendered(run.hcl, user_data, meta_data)


def new_instance_id() -> str:
    """cloud-init's instance-id of one build VM: a new one makes it a first boot again (the
    configure run boots a layer that has booted once already)."""
    return f"flower-build-{uuid.uuid4()}"
