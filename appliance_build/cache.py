"""A content-addressed cache: an entry is a directory named by the hash of its inputs.

An entry is built in a temporary sibling directory and renamed into place only
when complete, so an interrupted build never leaves a half-written entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .paths import cache_root


def inputs_hash(inputs: dict[str, Any]) -> str:
    """A stable sha256 of JSON-able inputs (key order does not matter)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def entry_dir(kind: str, name: str, key: str) -> Path:
    return cache_root() / kind / f"{name}-{key[:16]}"


@contextlib.contextmanager
def new_entry(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(final.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    scratch.rename(final)
