"""OpenNebula VM templates of the appliance, rendered from templates/opennebula/*.tmpl.j2.

    render_vm_template("cpu", "supernode-cpu")
    render_vm_template("gpu", "supernode-gpu", pci_short_address="e1:00.0")

CONTEXT, USER_INPUTS and INPUTS_ORDER come from the runtime's one variable
table (supernode_runtime.variables), never from a hand-written list; the
marketplace YAML (appliance_build.publish) uses the same functions, so the VM
template and the marketplace entry cannot disagree.

The GPU template adds what PCI passthrough of a modern GPU needs: UEFI
firmware (OVMF maps the GPU's large 64-bit BARs), the q35 machine (a PCIe
topology), the host-passthrough CPU model, a pinned TOPOLOGY and the PCI
device (https://docs.opennebula.io/6.8/open_cluster_deployment/kvm_node/pci_passthrough.html).
OpenNebula's KVM driver reads the machine type from OS/MACHINE (as the
marketplace's GPU appliances nim and vllm write it). FEATURES/MACHINE is not an
attribute the driver reads; the template also writes it because the appliance
was first specified with that spelling, and it is harmless (docs/publishing.md).

`parse_template` reads OpenNebula template syntax back (``KEY = "v"``,
``KEY = [ A = "x", B = "y" ]``, ``#`` comments), for checks and tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jinja2

from supernode_runtime.variable_docs import user_input
from supernode_runtime.variables import VARIABLES

from .errors import ConfigError
from .paths import TEMPLATES_DIR

ONE_TEMPLATES_DIR = TEMPLATES_DIR / "opennebula"
VARIANTS = ("cpu", "gpu")
GPU_PCI_PLACEHOLDER = "<gpu_pci_address>"
"""What the GPU template's PCI/SHORT_ADDRESS holds unless a real address is given: the
operator replaces it with the host's GPU (lspci -D, without the 0000: domain)."""

SHORT_ADDRESS_RE = re.compile(r"^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Sizing:
    """Capacity of a VM made from the template (CPU is the OpenNebula share, VCPU the guest's)."""

    cpu: int
    vcpu: int
    memory_mib: int


SIZING: dict[str, Sizing] = {
    # The SuperNode plus a subprocess ClientApp: two cores and 4 GiB train the small models.
    "cpu": Sizing(cpu=2, vcpu=2, memory_mib=4096),
    # Pinned cores (TOPOLOGY PIN_POLICY=CORE: one host core per vCPU) and room for the CUDA runtime.
    "gpu": Sizing(cpu=4, vcpu=4, memory_mib=16384),
}


def context_attributes() -> dict[str, str]:
    """CONTEXT of the appliance: OpenNebula's own entries, then every ONEAPP_FL_* from the table."""
    context = {
        "NETWORK": "YES",
        "SSH_PUBLIC_KEY": "$USER[SSH_PUBLIC_KEY]",
        "TOKEN": "YES",  # OneGate: SuperLink discovery and the ready report
        "REPORT_READY": "YES",
    }
    for var in VARIABLES:
        context[var.oneapp_name] = f"${var.oneapp_name}"
    return context


def user_inputs() -> dict[str, str]:
    """``{ONEAPP_FL_*: "O|type|description|options|default"}`` in the table's order."""
    return {var.oneapp_name: user_input(var) for var in VARIABLES}


def inputs_order() -> str:
    return ",".join(var.oneapp_name for var in VARIABLES)


def one_string(value: object) -> str:
    """A value as an OpenNebula template string: double-quoted, inner quotes escaped."""
    text = str(value)
    if "\\" in text or "\n" in text or "\r" in text:
        raise ConfigError(f"OpenNebula template value {text!r}: backslashes and line breaks are not supported")
    return '"' + text.replace('"', '\\"') + '"'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ONE_TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = one_string
    return env


def render_vm_template(
    variant: str,
    image_name: str,
    *,
    pci_short_address: str = GPU_PCI_PLACEHOLDER,
    cores: int | None = None,
    memory_mib: int | None = None,
    description: str | None = None,
) -> str:
    """The OpenNebula VM template text for `variant` ("cpu" | "gpu") using image `image_name`.

    `pci_short_address` (GPU only) is the host's GPU as OpenNebula's PCI SHORT_ADDRESS
    (``e1:00.0``); the default is the placeholder the operator replaces. `cores` sets
    CPU, VCPU and (GPU) TOPOLOGY/CORES; `memory_mib` sets MEMORY.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r}: must be one of {', '.join(VARIANTS)}")
    if not IMAGE_NAME_RE.match(image_name):
        raise ConfigError(f"image name {image_name!r}: letters, digits, '.', '_' and '-' only")
    if variant == "gpu" and pci_short_address != GPU_PCI_PLACEHOLDER and not SHORT_ADDRESS_RE.match(pci_short_address):
        raise ConfigError(
            f"PCI short address {pci_short_address!r}: expected bus:device.function such as e1:00.0 "
            "(lspci -D without the 0000: domain)"
        )
    sizing = SIZING[variant]
    if cores is not None:
        if not 1 <= cores <= 256:
            raise ConfigError(f"cores {cores}: must be 1..256")
        sizing = Sizing(cpu=cores, vcpu=cores, memory_mib=sizing.memory_mib)
    if memory_mib is not None:
        if not 512 <= memory_mib <= 4 * 1024 * 1024:
            raise ConfigError(f"memory {memory_mib} MiB: must be 512..4194304")
        sizing = Sizing(cpu=sizing.cpu, vcpu=sizing.vcpu, memory_mib=memory_mib)
    default_description = {
        "cpu": "Flower SuperNode (federated-learning client), CPU",
        "gpu": "Flower SuperNode (federated-learning client), NVIDIA GPU passthrough",
    }[variant]
    text = (
        _environment()
        .get_template(f"{variant}.tmpl.j2")
        .render(
            name=image_name,
            image=image_name,
            description=description or default_description,
            sizing=sizing,
            context=context_attributes(),
            user_inputs=user_inputs(),
            inputs_order=inputs_order(),
            pci_short_address=pci_short_address,
            pci_is_placeholder=pci_short_address == GPU_PCI_PLACEHOLDER,
        )
    )
    parse_template(text)  # a template edit that breaks the syntax fails here, not in OpenNebula
    return text


# --- reading OpenNebula template syntax ------------------------------------------------

Value = str | dict[str, str]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*")
  | (?P<punct>[=\[\],])
  | (?P<word>[^\s=\[\],"#]+)
    """,
    re.VERBOSE,
)


class TemplateSyntaxError(ValueError):
    """The text is not OpenNebula template syntax."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise TemplateSyntaxError(f"line {line}: unexpected {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            value = m.group()
            if kind == "string":
                value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
            out.append((kind, value, text.count("\n", 0, pos) + 1))
        pos = m.end()
    return out


def parse_template(text: str) -> list[tuple[str, Value]]:
    """Attributes in order, as (NAME, value) with NAME upper-cased (OpenNebula is case-insensitive).

    A single attribute's value is a str; a vector attribute's is a dict of its sub-attributes.
    Attributes may repeat (DISK, NIC, PCI), so this is a list, not a dict.
    """
    tokens = _tokens(text)
    attributes: list[tuple[str, Value]] = []
    i = 0

    def expect(kind: str, value: str | None = None) -> tuple[str, str, int]:
        nonlocal i
        if i >= len(tokens):
            raise TemplateSyntaxError(f"unexpected end of template (expected {value or kind})")
        token = tokens[i]
        if token[0] != kind or (value is not None and token[1] != value):
            raise TemplateSyntaxError(f"line {token[2]}: expected {value or kind}, got {token[1]!r}")
        i += 1
        return token

    def scalar() -> str:
        nonlocal i
        if i < len(tokens) and tokens[i][0] in ("string", "word"):
            i += 1
            return tokens[i - 1][1]
        line = tokens[i][2] if i < len(tokens) else "end"
        raise TemplateSyntaxError(f"line {line}: expected a value")

    while i < len(tokens):
        name = expect("word")[1].upper()
        expect("punct", "=")
        if i < len(tokens) and tokens[i][1] == "[" and tokens[i][0] == "punct":
            i += 1
            vector: dict[str, str] = {}
            while True:
                sub = expect("word")[1].upper()
                expect("punct", "=")
                if sub in vector:
                    raise TemplateSyntaxError(f"{name}: {sub} given twice")
                vector[sub] = scalar()
                if i < len(tokens) and tokens[i][:2] == ("punct", ","):
                    i += 1
                    continue
                expect("punct", "]")
                break
            attributes.append((name, vector))
        else:
            attributes.append((name, scalar()))
    return attributes


def single(attributes: list[tuple[str, Value]], name: str) -> Value:
    """The one attribute called `name` (KeyError if absent, ValueError if repeated)."""
    found = [value for key, value in attributes if key == name.upper()]
    if not found:
        raise KeyError(name)
    if len(found) > 1:
        raise ValueError(f"{name} appears {len(found)} times")
    return found[0]
