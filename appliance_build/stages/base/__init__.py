"""Base images: a bootable disk the Packer build starts from (as a backing file).

Two providers, both cached by a hash of their inputs:
  debian-12     bootstrapped here from the Debian mirror (the offline default)
  ubuntu-24.04  the official cloud image, downloaded and checked against SHA256SUMS
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import cache
from ...config import BaseConfig
from ...progress import say
from . import debian, ubuntu


@dataclass(frozen=True)
class BaseImage:
    disk: Path  # qcow2, used read-only as the build's backing file
    key: str  # sha256 of the inputs
    cached: bool  # True when reused from the cache
    facts: dict[str, Any]


def inputs(base: BaseConfig) -> dict[str, Any]:
    if base.provider == "debian-12":
        return debian.inputs(base)
    return ubuntu.inputs(base)


def cache_entry(base: BaseConfig) -> tuple[str, Path]:
    """The inputs hash of this base and its cache directory (which may not exist yet)."""
    key = cache.inputs_hash(inputs(base))
    return key, cache.entry_dir("base", base.provider, key)


def ensure(base: BaseConfig, logs: Path) -> BaseImage:
    """The cached base for these inputs, built (or downloaded) first if missing."""
    key, entry = cache_entry(base)
    disk = entry / "disk.qcow2"
    if disk.is_file() and (entry / "base.json").is_file():
        say(f"base {base.provider}: cached {entry}")
        return BaseImage(disk, key, True, json.loads((entry / "base.json").read_text()))
    say(f"base {base.provider}: not cached, building into {entry}")
    started = time.monotonic()
    with cache.new_entry(entry) as scratch:
        provider = debian.build if base.provider == "debian-12" else ubuntu.fetch
        facts = provider(base, scratch, logs)
    facts["build_seconds"] = round(time.monotonic() - started, 1)
    (entry / "base.json").write_text(json.dumps(facts, indent=2))
    return BaseImage(disk, key, False, facts)
