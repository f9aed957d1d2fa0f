"""Turn Packer's overlay into the published file: flatten, compress, checksum, manifest.

The compressed qcow2 is written under a temporary name and renamed into place
only after its checksum file is written, so the final path never holds a
partial image.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from ..cache import file_sha256
from ..progress import run


def compress(overlay: Path, final: Path, log: Path) -> dict[str, Any]:
    partial = final.with_name(final.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        run(
            ["qemu-img", "convert", "-p", "-c", "-O", "qcow2", "-o", "compression_type=zlib",
             str(overlay), str(partial)],
            log, label="qemu-img convert -c", timeout=3600,
        )  # fmt: skip
        sha = file_sha256(partial)
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(partial)],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        final.with_name(final.name + ".sha256").write_text(f"{sha}  {final.name}\n")
        partial.rename(final)
    finally:
        partial.unlink(missing_ok=True)
    return {
        "file": final.name,
        "sha256": sha,
        "file_bytes": final.stat().st_size,
        "virtual_bytes": info["virtual-size"],
        "format": "qcow2 (zlib-compressed)",
    }
