"""The OpenNebula VM templates: parsed back structurally, every attribute GPU passthrough needs,
and CONTEXT / USER_INPUTS / INPUTS_ORDER exactly from the runtime's variable table."""

from __future__ import annotations

from typing import Any

import pytest

from appliance_build.errors import ConfigError
from appliance_build.opennebula_templates import (
    GPU_PCI_PLACEHOLDER,
    TemplateSyntaxError,
    parse_template,
    render_vm_template,
    single,
)
from supernode_runtime.variable_docs import user_input
from supernode_runtime.variables import VARIABLES

# The GPU variables' USER_INPUT strings exactly as the appliance publishes them: a change
# here changes the instantiate dialog operators know, so it must be deliberate.
PUBLISHED_GPU_INPUTS = {
    "ONEAPP_FL_GPU_ENABLED": "O|boolean|Enable GPU passthrough (requires GPU-enabled VM template)| |NO",
    "ONEAPP_FL_CUDA_VISIBLE_DEVICES": "O|text|GPU device IDs visible to container (e.g., 0 or 0,1)| |all",
    "ONEAPP_FL_GPU_MEMORY_FRACTION": "O|number|GPU memory fraction for PyTorch (0.0-1.0)| |0.8",
}


def test_parser_reads_single_and_vector_attributes() -> None:
    text = (
        '# comment\nNAME = "a b"\ncpu = 2\nOS = [ ARCH = "x86_64", FIRMWARE = "UEFI" ]\n'
        'CONTEXT = [\n  NOTE = "say \\"hi\\"", # trailing comment\n  X = "$Y" ]\n'
        'DISK = [ IMAGE = "i1" ]\nDISK = [ IMAGE = "i2" ]\n'
    )
    parsed = parse_template(text)
    assert parsed == [
        ("NAME", "a b"),
        ("CPU", "2"),
        ("OS", {"ARCH": "x86_64", "FIRMWARE": "UEFI"}),
        ("CONTEXT", {"NOTE": 'say "hi"', "X": "$Y"}),
        ("DISK", {"IMAGE": "i1"}),
        ("DISK", {"IMAGE": "i2"}),
    ]
    with pytest.raises(ValueError, match="2 times"):
        single(parsed, "DISK")


@pytest.mark.parametrize(
    "bad", ['NAME "x"', 'OS = [ ARCH = "x86_64"', "OS = [ ]", 'NAME = "unterminated', 'OS = [ A = "1", A = "2" ]']
)
def test_parser_rejects_broken_syntax(bad: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(bad)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_context_and_user_inputs_come_from_the_variable_table(variant: str) -> None:
    parsed = parse_template(render_vm_template(variant, f"supernode-{variant}"))
    context = single(parsed, "CONTEXT")
    assert isinstance(context, dict)
    assert context["NETWORK"] == "YES"
    assert context["SSH_PUBLIC_KEY"] == "$USER[SSH_PUBLIC_KEY]"
    assert context["TOKEN"] == "YES"
    assert context["REPORT_READY"] == "YES"
    fl_keys = [k for k in context if k.startswith("ONEAPP_FL_")]
    assert fl_keys == [var.oneapp_name for var in VARIABLES]
    for var in VARIABLES:
        assert context[var.oneapp_name] == f"${var.oneapp_name}"

    inputs = single(parsed, "USER_INPUTS")
    assert isinstance(inputs, dict)
    assert inputs == {var.oneapp_name: user_input(var) for var in VARIABLES}
    assert single(parsed, "INPUTS_ORDER") == ",".join(var.oneapp_name for var in VARIABLES)
    for name, published in PUBLISHED_GPU_INPUTS.items():
        assert inputs[name] == published


def test_cpu_template_structure() -> None:
    parsed = parse_template(render_vm_template("cpu", "supernode-cpu"))
    assert single(parsed, "NAME") == "supernode-cpu"
    assert single(parsed, "DISK") == {"IMAGE": "supernode-cpu", "DEV_PREFIX": "vd"}
    assert single(parsed, "OS") == {"ARCH": "x86_64"}
    assert int(str(single(parsed, "MEMORY"))) >= 2048
    assert int(str(single(parsed, "VCPU"))) >= 1
    names = {name for name, _ in parsed}
    assert not names & {"PCI", "TOPOLOGY", "CPU_MODEL"}, "the CPU template must schedule on any host"


def test_gpu_template_has_every_passthrough_attribute() -> None:
    parsed = parse_template(render_vm_template("gpu", "supernode-gpu", pci_short_address="e1:00.0", cores=8))
    os_attr = single(parsed, "OS")
    assert isinstance(os_attr, dict)
    assert os_attr["ARCH"] == "x86_64"
    assert os_attr["FIRMWARE"] == "UEFI"
    assert os_attr["MACHINE"] == "q35"  # where OpenNebula's KVM driver reads it
    assert single(parsed, "FEATURES") == {"MACHINE": "q35"}  # kept for reference, not read by the driver
    assert single(parsed, "CPU_MODEL") == {"MODEL": "host-passthrough"}
    assert single(parsed, "TOPOLOGY") == {"PIN_POLICY": "CORE", "CORES": "8", "SOCKETS": "1"}
    assert single(parsed, "VCPU") == "8"
    assert single(parsed, "PCI") == {"SHORT_ADDRESS": "e1:00.0"}
    assert single(parsed, "DISK") == {"IMAGE": "supernode-gpu", "DEV_PREFIX": "vd"}


def test_gpu_template_default_pci_address_is_the_placeholder() -> None:
    text = render_vm_template("gpu", "supernode-gpu")
    assert single(parse_template(text), "PCI") == {"SHORT_ADDRESS": GPU_PCI_PLACEHOLDER}
    assert f"Replace {GPU_PCI_PLACEHOLDER}" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "tpu", "image_name": "x"}, "variant"),
        ({"variant": "cpu", "image_name": 'bad"name'}, "image name"),
        ({"variant": "gpu", "image_name": "x", "pci_short_address": "0000:e1:00.0"}, "PCI short address"),
        ({"variant": "gpu", "image_name": "x", "cores": 0}, "cores"),
        ({"variant": "cpu", "image_name": "x", "memory_mib": 10}, "memory"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_vm_template(**kwargs)
