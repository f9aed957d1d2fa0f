"""A minimal `newc` cpio writer, enough for a tiny initramfs."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path


def _header(ino: int, mode: int, size: int, name: bytes) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return b"070701" + b"".join(f"{v:08x}".encode() for v in fields)


def _pad(length: int) -> bytes:
    return b"\0" * ((4 - length % 4) % 4)


def write_initramfs(target: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write a gzip'd newc archive of regular files {path: (content, mode)}.

    Parent directories are created automatically.
    """
    dirs = sorted({str(Path(p).parent) for p in files if str(Path(p).parent) != "."})
    out = bytearray()
    ino = 1
    for d in dirs:
        name = d.encode()
        out += _header(ino, stat.S_IFDIR | 0o755, 0, name) + name + b"\0"
        out += _pad(110 + len(name) + 1)
        ino += 1
    for path, (content, mode) in sorted(files.items()):
        name = path.encode()
        out += _header(ino, stat.S_IFREG | mode, len(content), name) + name + b"\0"
        out += _pad(110 + len(name) + 1)
        out += content + _pad(len(content))
        ino += 1
    trailer = b"TRAILER!!!"
    out += _header(0, 0, 0, trailer) + trailer + b"\0" + _pad(110 + len(trailer) + 1)
    target.write_bytes(gzip.compress(bytes(out)))
