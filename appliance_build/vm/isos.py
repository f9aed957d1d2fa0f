"""Small ISO images a VM reads its configuration from.

cidata   cloud-init NoCloud seed (user-data, meta-data)
CONTEXT  OpenNebula's context CD: context.sh (KEY='value' lines) and token.txt
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from supernode_runtime.context_parser import format_context  # the appliance's own format

from ..errors import BuildError


def make_iso(out: Path, label: str, files: dict[str, bytes]) -> Path:
    tool = shutil.which("xorriso")
    if tool is None:
        raise BuildError("xorriso is missing (Debian/Ubuntu: apt-get install xorriso)")
    with tempfile.TemporaryDirectory(prefix="iso-") as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        subprocess.run(
            [tool, "-as", "mkisofs", "-quiet", "-V", label, "-J", "-R", "-o", str(out), tmp],
            check=True,
            capture_output=True,
        )
    return out


def context_iso(out: Path, variables: dict[str, str], token: str = "") -> Path:
    files = {"context.sh": format_context(variables).encode()}
    if token:
        files["token.txt"] = token.encode()
    return make_iso(out, "CONTEXT", files)


def nocloud_iso(out: Path, user_data: str, meta_data: str) -> Path:
    return make_iso(out, "cidata", {"user-data": user_data.encode(), "meta-data": meta_data.encode()})
