"""Turn Packer's overlay into the published file: flatten, compress, checksum, manifest.

The compressed qcow2 and its checksum are written as `<final>.new` (`staged()`);
the build renames them over the previous image only when every stage succeeded,
so neither the final path nor its `.new` ever holds a partial image.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from ..cache import file_sha256
from ..progress import run


def staged(final: Path) -> Path:
    """Where the new version of a result waits until the build swaps it in."""
    return final.with_name(final.name + ".new")


def compress(overlay: Path, final: Path, log: Path, compression: str = "zstd") -> dict[str, Any]:
    """Write staged(final) and staged(final.sha256); the checksum line names `final`.
    `compression` is the qcow2 compression_type of its clusters (zstd or zlib)."""
    partial = final.with_name(final.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        run(
            [
                "qemu-img",
                "convert",
                "-p",
                "-c",
                "-O",
                "qcow2",
                "-o",
                f"compression_type={compression}",
                str(overlay),
                str(partial),
            ],
            log,
            label=f"qemu-img convert -c ({compression})",
            timeout=3600,
        )
        sha = file_sha256(partial)
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(partial)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        staged(final.with_name(final.name + ".sha256")).write_text(f"{sha}  {final.name}\n")
        partial.rename(staged(final))
    finally:
        partial.unlink(missing_ok=True)
    return {
        "file": final.name,
        "sha256": sha,
        "file_bytes": staged(final).stat().st_size,
        "virtual_bytes": info["virtual-size"],
        "format": f"qcow2 ({compression}-compressed)",
        "compression": compression,
    }
