"""OpenNebula USER_INPUTS and the README table, generated from :data:`VARIABLES`."""

from __future__ import annotations

from supernode_runtime.variables import VARIABLES, Variable


def user_input(var: Variable) -> str:
    """OpenNebula USER_INPUT string ``M|O|type|description|options|default``.

    All SuperNode inputs are optional (``O``). Options is a single space for
    non-list types (``O|boolean|...| |NO``), so every string has all six fields
    (https://docs.opennebula.io/7.0/product/operation_references/configuration_references/template,
    "User Inputs").
    """
    if "|" in var.help:
        raise ValueError(f"{var.name}: help text must not contain '|'")
    options = ",".join(var.options) if var.options else " "
    return f"O|{var.user_input_type}|{var.help}|{options}|{var.default}"


def user_inputs(prefixed: bool = True) -> dict[str, str]:
    """``{name: USER_INPUT string}`` for every variable.

    Names carry the ONEAPP_ prefix by default (the marketplace convention);
    ``prefixed=False`` gives the plain names.
    """
    return {(var.oneapp_name if prefixed else var.name): user_input(var) for var in VARIABLES}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table() -> str:
    """Markdown table of all variables for the README."""
    header = (
        "| Variable | Type | Default | Accepted values | Boot step | Secret | Description |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(empty)"
        rows.append(
            f"| `{var.oneapp_name}` (or `{var.name}`) | {_cell(var.type)} | {default} | "
            f"{_cell(var.accepted)} | {var.stage} | {'yes' if var.secret else 'no'} | "
            f"{_cell(var.help)} |"
        )
    note = (
        "\nEach variable may be given as `ONEAPP_<NAME>` or `<NAME>`; when both are "
        "non-empty the `ONEAPP_` spelling wins. Empty means the default.\n"
    )
    return header + "\n".join(rows) + "\n" + note
