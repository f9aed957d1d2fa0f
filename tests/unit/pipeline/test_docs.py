"""The README's variable table is the generated one (run `nox -s docs` after changing the table)."""

from __future__ import annotations

from appliance_build.docs import README, render_readme
from supernode_runtime.variables import VARIABLES


def test_readme_table_is_current() -> None:
    text = README.read_text()
    assert render_readme(text) == text, "README.md is stale: run `nox -s docs`"


def test_every_variable_is_in_the_readme() -> None:
    text = README.read_text()
    for variable in VARIABLES:
        assert f"`ONEAPP_{variable.name}`" in text
