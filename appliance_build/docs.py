"""Generated documentation: the README's context-variable table comes from the
runtime's one table (supernode_runtime.variables), never written by hand."""

from __future__ import annotations

import re
from pathlib import Path

from supernode_runtime.variable_docs import markdown_table

from .paths import REPO

README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- BEGIN context-variables[^\n]*-->\n)(.*?)(<!-- END context-variables -->)", re.DOTALL)


def render_readme(text: str) -> str:
    if not BLOCK.search(text):
        raise ValueError("README.md has no <!-- BEGIN context-variables --> ... <!-- END ... --> block")
    return BLOCK.sub(lambda m: m[1] + markdown_table().rstrip("\n") + "\n" + m[3], text)


def update_readme(path: Path = README) -> bool:
    """Rewrite the generated block; True if the file changed."""
    old = path.read_text()
    new = render_readme(old)
    if new != old:
        path.write_text(new)
    return new != old
