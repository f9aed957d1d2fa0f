"""ubuntu-24.04: the official cloud image, verified against its SHA256SUMS.

The image is downloaded to a temporary name next to its final place; only a
file whose sha256 matches the line for it in SHA256SUMS is kept, anything
else is deleted and the build stops saying which hash was expected and which
was found.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ...config import BaseConfig
from ...errors import BuildError
from ...progress import run, say

CHUNK = 1 << 20


def inputs(base: BaseConfig) -> dict[str, Any]:
    return {"provider": "ubuntu-24.04", "url": base.url, "sha256sums_url": base.sha256sums_url}


def expected_sha256(sums_text: str, filename: str) -> str:
    """The hash SHA256SUMS gives for `filename` (lines '<hash> *<name>' or '<hash>  <name>')."""
    for line in sums_text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return parts[0].lower()
    raise BuildError(f"SHA256SUMS has no line for {filename}; refusing to use an unverified image")


def download_verified(url: str, sums_url: str, target: Path, timeout: float = 60.0) -> str:
    """Download `url` to `target` only if it matches SHA256SUMS; return its sha256."""
    filename = PurePosixPath(urlsplit(url).path).name
    with urllib.request.urlopen(sums_url, timeout=timeout) as response:
        expected = expected_sha256(response.read().decode(errors="replace"), filename)
    partial = target.with_name(target.name + ".download")
    digest = hashlib.sha256()
    done = 0
    last = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if time.monotonic() - last > 10:
                    share = f" of {total >> 20} MiB" if total else ""
                    say(f"   downloading {filename}: {done >> 20} MiB{share}")
                    last = time.monotonic()
        found = digest.hexdigest()
        if found != expected:
            raise BuildError(
                f"checksum mismatch for {url}: SHA256SUMS says {expected}, downloaded file has "
                f"{found}; the file was deleted, nothing was cached"
            )
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return found


def fetch(base: BaseConfig, out: Path, logs: Path) -> dict[str, Any]:
    say(f"downloading {base.url} (verified against {base.sha256sums_url})")
    original = out / "cloud.img"
    sha = download_verified(base.url, base.sha256sums_url, original)
    run(
        ["qemu-img", "convert", "-O", "qcow2", str(original), str(out / "disk.qcow2")],
        logs / "base-ubuntu-24.04.log",
        label="qemu-img convert",
    )
    original.unlink()
    shutil.rmtree(out / "work", ignore_errors=True)
    return {
        "distribution": "Ubuntu 24.04 LTS (cloud image)",
        "source_url": base.url,
        "source_sha256": sha,
    }
