"""The OpenNebula marketplace appliance YAML: generated from the manifest, and checked.

The format is the one of the OpenNebula/marketplace repository (see the published
files in ../shared/reference/marketplace/). Checks, for generated files and for any
file given to `python -m appliance_build.publish check`:

  1. yamllint with the marketplace repository's settings (schemas/marketplace.yamllint.yml),
     warnings included (as `yamllint --strict`);
  2. the JSON Schema schemas/marketplace-appliance.schema.json, every error named by
     its field path (``images[0].checksum.sha256: ...``);
  3. consistency: INPUTS_ORDER names exactly the USER_INPUTS, and each USER_INPUT is
     handed to the VM through CONTEXT (``oneapp_x: "$ONEAPP_X"``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from .. import nvidia_support
from ..artifacts import Manifest, ToolkitRecord
from ..opennebula_templates import SIZING, context_attributes, inputs_order, user_inputs
from ..paths import REPO
from .errors import PublishError

SCHEMAS_DIR = REPO / "schemas"
SCHEMA_PATH = SCHEMAS_DIR / "marketplace-appliance.schema.json"
YAMLLINT_CONFIG = SCHEMAS_DIR / "marketplace.yamllint.yml"

DEFAULT_PUBLISHER = "Flower appliance images project"
OPENNEBULA_VERSIONS = "6.10, 7.0, 7.2, 7.4"
LOGO = "flower.png"
FLOWER_DOCS = "https://flower.ai/docs/"

# base.provider of the image definition -> (os-id, os-release) as the marketplace writes them
OS_IDS = {
    "debian-12": ("Debian GNU/Linux", "12"),
    "debian-13": ("Debian GNU/Linux", "13"),
    "ubuntu-24.04": ("Ubuntu", "24.04 LTS"),
}


# --- generation ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    """What the marketplace entry says about the published file."""

    file_name: str
    url: str
    virtual_bytes: int
    sha256: str
    md5: str


def creation_time(manifest: Manifest) -> int:
    return int(manifest.created.timestamp())  # Manifest.load checked that built_at has an offset


def default_version(manifest: Manifest) -> str:
    """<flwr version>-<build date>, e.g. 1.41.0-20260722 (like the marketplace's 7.4.0-0-20260714)."""
    stamp = dt.datetime.fromtimestamp(creation_time(manifest), dt.UTC).strftime("%Y%m%d")
    return f"{manifest.contents.flwr}-{stamp}"


def os_identity(manifest: Manifest) -> tuple[str, str]:
    provider = manifest.base.provider
    if provider in OS_IDS:
        return OS_IDS[provider]
    distribution = manifest.contents.distribution
    m = re.match(r"^(.*?)\s+(\d[\d.]*(?:\s+LTS)?)", distribution)
    if m:
        return m[1], m[2]
    raise PublishError(f"manifest.json: cannot tell the OS (base.provider {provider!r}, distribution {distribution!r})")


def toolkit_version(toolkit: ToolkitRecord) -> str:
    return toolkit.version if toolkit.status == "installed" and toolkit.version else "absent"


GPU_UNVERIFIED = "GPU passthrough not verified for this build"


def _description(manifest: Manifest, variant: str, *, gpu_passthrough_verified: bool = True) -> str:
    contents = manifest.contents
    distribution = contents.distribution
    docker = contents.docker
    flwr = contents.flwr
    paragraphs = [
        f"[Flower](https://flower.ai/) SuperNode appliance: the federated-learning client of a Flower "
        f"federation, as a pre-loaded container (flwr {flwr}) run by Docker {docker} on {distribution}. "
        f"Docs: [flower.ai/docs]({FLOWER_DOCS}).",
        "The SuperNode connects to the SuperLink given in `ONEAPP_FL_SUPERLINK_ADDRESS` (host:port, "
        "port 8000 if omitted) or, when that is empty, discovers it through OneGate in a OneFlow "
        "service. Every setting is a context variable (`ONEAPP_FL_*`) offered as a user input; a bad "
        "value keeps the VM up and reachable, and `flower-appliance status` names the variable.",
    ]
    if manifest.gpu is not None:
        gpu = manifest.gpu
        paragraphs.append(
            f"NVIDIA GPU variant: NVIDIA driver {gpu.driver_version or 'unknown'} and the NVIDIA "
            f"Container Toolkit {toolkit_version(gpu.toolkit)}. The VM template boots with UEFI on the q35 machine "
            "with the host-passthrough CPU model; after importing, add the GPU as a PCI device "
            '(`PCI = [ SHORT_ADDRESS = "e1:00.0" ]`, the card bound to vfio-pci on the host) and set '
            "`ONEAPP_FL_GPU_ENABLED` to YES. Without a usable GPU the SuperNode runs on the CPU and says so."
        )
        driver = nvidia_support.from_manifest(gpu)
        source = {"nvidia-repo": "NVIDIA's repository", "debian": "Debian's packages"}[gpu.driver_source]
        paragraphs.append(
            f"Driver branch R{gpu.driver_branch} from {source}, {gpu.kernel_modules} kernel "
            f"modules: {nvidia_support.describe(driver)}."
        )
        if not gpu_passthrough_verified:
            paragraphs.append(
                f"**{GPU_UNVERIFIED}**: the GPU passthrough checks of its in-image tests did not run "
                "(no GPU on the test host); what was tested is the image without a GPU (driver present, "
                "fallback to the CPU). Run "
                "`/opt/flower/scripts/validate-gpu.sh` in the first VM with a GPU attached."
            )
    paragraphs.append(
        "There is no password for the root account. To access the Virtual Machine, add an SSH public "
        "key to your user or the template and ssh to the root account."
    )
    return "\n\n".join(paragraphs)


def appliance_document(
    manifest: Manifest,
    image: ImageFacts,
    *,
    version: str | None = None,
    publisher: str = DEFAULT_PUBLISHER,
    opennebula_version: str = OPENNEBULA_VERSIONS,
    gpu_passthrough_verified: bool = True,
) -> dict[str, Any]:
    """The marketplace appliance as a dict, in the marketplace files' key order.

    gpu_passthrough_verified=False (GPU image): the description states GPU_UNVERIFIED."""
    variant = manifest.variant
    os_id, os_release = os_identity(manifest)
    sizing = SIZING[variant]
    kind = "NVIDIA GPU passthrough" if variant == "gpu" else "CPU"
    template: dict[str, Any] = {
        "context": {key.lower(): value for key, value in context_attributes().items()},
        "cpu": str(sizing.cpu),
        "vcpu": str(sizing.vcpu),
        "memory": str(sizing.memory_mib),
    }
    if variant == "gpu":
        template["cpu_model"] = {"model": "host-passthrough"}
    template["graphics"] = {"listen": "0.0.0.0", "type": "vnc"}
    template["inputs_order"] = inputs_order()
    template["os"] = {"arch": "x86_64"}
    if variant == "gpu":
        template["os"].update({"machine": "q35", "firmware": "UEFI"})
    template["user_inputs"] = {key.lower(): value for key, value in user_inputs().items()}
    tags = ["flower", "federated-learning", "supernode", os_id.split()[0].lower(), "docker", "service"]
    if variant == "gpu":
        tags += ["gpu", "nvidia"]
    return {
        "name": f"Flower SuperNode ({kind})",
        "version": version or default_version(manifest),
        "publisher": publisher,
        "description": _description(manifest, variant, gpu_passthrough_verified=gpu_passthrough_verified),
        "short_description": f"Flower SuperNode federated-learning client on {os_id} {os_release}, {kind}",
        "tags": tags,
        "format": "qcow2",
        "creation_time": creation_time(manifest),
        "os-id": os_id,
        "os-release": os_release,
        "os-arch": "x86_64",
        "hypervisor": "KVM",
        "opennebula_version": opennebula_version,
        "opennebula_template": template,
        "logo": LOGO,
        "images": [
            {
                "name": image.file_name.removesuffix(".qcow2"),
                "url": image.url,
                "type": "OS",
                "dev_prefix": "vd",
                "driver": "qcow2",
                "size": image.virtual_bytes,
                "checksum": {"md5": image.md5, "sha256": image.sha256},
            }
        ],
    }


def _str_representer(dumper: Any, value: str) -> Any:
    style: str | None = None
    if "\n" in value:
        style = "|"
    elif value.startswith("$"):
        style = '"'  # "$ONEAPP_X" / "$USER[SSH_PUBLIC_KEY]", quoted as in the marketplace's files
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper: Any = type("MarketplaceDumper", (yaml.SafeDumper,), {})
_Dumper.add_representer(str, _str_representer)


def dump(document: dict[str, Any]) -> str:
    """YAML like the marketplace's files: `---` first, block style, multi-line text as `|-`."""
    text = yaml.dump(
        document,
        Dumper=_Dumper,
        explicit_start=True,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1_000_000,
    )
    return str(text)


# --- checks --------------------------------------------------------------------------


@cache
def schema() -> dict[str, Any]:
    data = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(data)
    return dict(data)


def field_path(parts: Iterable[str | int]) -> str:
    """["images", 0, "checksum", "sha256"] -> "images[0].checksum.sha256"."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def schema_problems(document: Any) -> list[str]:
    """Every schema violation as "field.path: what is wrong", sorted by path."""
    validator = jsonschema.Draft202012Validator(schema())
    problems: set[str] = set()
    for error in validator.iter_errors(document):
        parts = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    problems.add(f"{field_path([*parts, name])}: required field missing")
            continue
        problems.add(f"{field_path(parts)}: {error.message}")
    return sorted(problems)


def consistency_problems(document: Any) -> list[str]:
    """USER_INPUTS, INPUTS_ORDER and CONTEXT agree (only when the schema's types hold)."""
    if not isinstance(document, dict) or not isinstance(document.get("opennebula_template"), dict):
        return []
    template = document["opennebula_template"]
    inputs = template.get("user_inputs")
    order = template.get("inputs_order")
    context = template.get("context")
    problems: list[str] = []
    if isinstance(inputs, dict) and inputs:
        names = [str(k).upper() for k in inputs]
        if isinstance(order, str):
            listed = [n for n in order.split(",") if n]
            if sorted(listed) != sorted(names) or len(set(listed)) != len(listed):
                problems.append(
                    f"opennebula_template.inputs_order: lists {', '.join(listed)} but user_inputs has "
                    f"{', '.join(names)}"
                )
        else:
            problems.append("opennebula_template.inputs_order: required when user_inputs is given")
        if isinstance(context, dict):
            for key in inputs:
                expected = f"${str(key).upper()}"
                if context.get(key) != expected:
                    problems.append(
                        f"opennebula_template.context.{key}: must be {expected!r} to hand the user input to the VM"
                    )
    return problems


@cache
def _yamllint_config(path: Path) -> Any:
    return YamlLintConfig(file=str(path))


def yamllint_problems(text: str, config: Path = YAMLLINT_CONFIG) -> list[str]:
    """yamllint with the marketplace settings; warnings count (as with --strict)."""
    problems = []
    for problem in linter.run(text, _yamllint_config(config)):
        problems.append(f"line {problem.line} column {problem.column}: {problem.desc} ({problem.rule or 'syntax'})")
    return problems


def check_text(text: str, *, yamllint_config: Path = YAMLLINT_CONFIG) -> list[str]:
    """All problems of a marketplace appliance YAML; empty when it is valid."""
    problems = [f"yamllint: {p}" for p in yamllint_problems(text, yamllint_config)]
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [*problems, f"(document): not YAML: {exc}"]
    return problems + schema_problems(document) + consistency_problems(document)


def check_file(path: Path, *, yamllint_config: Path = YAMLLINT_CONFIG) -> list[str]:
    if not path.is_file():
        return [f"no such file {path}"]
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return [f"cannot read {path}: {exc}"]
    return check_text(text, yamllint_config=yamllint_config)
