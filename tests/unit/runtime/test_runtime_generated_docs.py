"""USER_INPUTS and README table generated from the table; systemd units; stdlib only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from runtime_testlib import REPO_ROOT

from supernode_runtime.variable_docs import markdown_table, user_input, user_inputs
from supernode_runtime.variables import BY_NAME, VARIABLES

PKG = REPO_ROOT / "supernode_runtime"


def test_gpu_user_inputs_are_the_published_strings() -> None:
    inputs = user_inputs()
    assert inputs["ONEAPP_FL_GPU_ENABLED"] == (
        "O|boolean|Enable GPU passthrough (requires GPU-enabled VM template)| |NO"
    )
    assert inputs["ONEAPP_FL_CUDA_VISIBLE_DEVICES"] == (
        "O|text|GPU device IDs visible to container (e.g., 0 or 0,1)| |all"
    )
    assert inputs["ONEAPP_FL_GPU_MEMORY_FRACTION"] == ("O|number|GPU memory fraction for PyTorch (0.0-1.0)| |0.8")


def test_every_user_input_has_five_fields_and_valid_default() -> None:
    for name, line in user_inputs(prefixed=False).items():
        fields = line.split("|")
        # M|O|type|description|options|default: "M|O" is one field (M or O)
        assert len(fields) == 5, line
        mandatory, kind, _help, options, default = fields
        assert mandatory == "O"
        assert kind in {"text", "text64", "boolean", "number", "number-float", "list"}
        var = BY_NAME[name]
        if kind == "list":
            assert default in options.split(",")
        if default:
            var.parse(default)  # defaults pass their own validation


def test_list_inputs_have_options() -> None:
    assert user_inputs()["ONEAPP_FL_ISOLATION"].split("|")[3] == "subprocess,process"
    assert user_input(BY_NAME["FL_LOG_LEVEL"]).endswith("|DEBUG,INFO,WARNING,ERROR,CRITICAL|INFO")


def test_markdown_has_a_row_per_variable() -> None:
    table = markdown_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(VARIABLES)
    assert all(line.count("|") - line.count("\\|") == 8 for line in rows)
    assert "| yes |" in table  # the CA certificate is marked secret


def _unit(name: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (PKG / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_configure_unit() -> None:
    unit = _unit("flower-appliance-configure.service")
    assert unit["Type"] == ["oneshot"]
    assert unit["RemainAfterExit"] == ["yes"]
    assert unit["ExecStart"] == ["/usr/bin/python3 -m supernode_runtime boot"]
    assert "PYTHONPATH=/opt/flower/lib" in unit["Environment"]
    after = unit["After"][0].split()
    assert {"network-online.target", "docker.service"} <= set(after)
    # WantedBy=multi-user.target + After=cloud-init.target would be an ordering cycle.
    assert "cloud-init.target" not in after
    assert unit["WantedBy"] == ["multi-user.target"]


def test_supernode_unit() -> None:
    unit = _unit("flower-supernode.service")
    assert unit["Requires"] == ["docker.service"]
    assert "flower-appliance-configure.service" in unit["After"][0].split()
    assert unit["ConditionPathExists"] == ["/run/flower/supernode.json"]
    assert unit["ExecStartPre"] == ["-/usr/bin/docker rm -f flower-supernode"]
    assert unit["ExecStart"] == ["/usr/bin/python3 -m supernode_runtime run-supernode"]
    assert unit["Restart"] == ["always"]
    assert unit["RestartSec"] == ["15"]
    assert unit["StartLimitIntervalSec"] == ["0"]
    assert "PYTHONPATH=/opt/flower/lib" in unit["Environment"]


def test_cli_wrapper() -> None:
    text = (PKG / "bin" / "flower-appliance").read_text()
    assert text.startswith("#!/bin/sh\n")
    assert 'exec /usr/bin/python3 -m supernode_runtime "$@"' in text


@pytest.mark.parametrize("path", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_runtime_imports_only_stdlib(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        else:
            continue
        for mod in mods:
            top = mod.split(".")[0]
            # torch / tensorflow are only imported lazily, via importlib, in flower_device
            assert top in sys.stdlib_module_names or top == "supernode_runtime", (path, mod)
