"""Checksums and sizes of the published file, read in one pass (never recompressed)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import PublishError

CHUNK = 4 * 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str
    file_bytes: int


def digests(path: Path) -> Digests:
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)  # the marketplace format carries md5 next to sha256
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return Digests(sha256.hexdigest(), md5.hexdigest(), size)


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def qcow2_virtual_size(path: Path) -> int:
    """The disk's virtual size in bytes, from the qcow2 header (big-endian u64 at offset 24)."""
    with path.open("rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        raise PublishError(f"{path} is not a qcow2 image (no QFI\\xfb header)")
    version = struct.unpack(">I", header[4:8])[0]
    if version not in (2, 3):
        raise PublishError(f"{path}: unsupported qcow2 version {version}")
    return int(struct.unpack(">Q", header[24:32])[0])


def read_checksum_file(path: Path) -> str:
    """The hash in a `sha256sum`/`md5sum` style file (first field of the first line)."""
    text = path.read_text().strip()
    if not text:
        raise PublishError(f"{path} is empty")
    return text.split()[0].lower()


def checksum_line(digest: str, file_name: str) -> str:
    """One line of `sha256sum` output (two spaces: text mode, as sha256sum -c expects)."""
    return f"{digest}  {file_name}\n"
