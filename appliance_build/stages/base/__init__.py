"""Base images: a bootable disk the Packer build starts from (as a backing file).

Providers, all cached by a hash of their inputs:
  debian-13     bootstrapped here from the Debian mirror (trixie; the default)
  debian-12     the same recipe for bookworm
  ubuntu-24.04  the official cloud image, downloaded and checked against SHA256SUMS
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ... import cache, host_tools
from ...config import BaseConfig
from ...suites import SUITES
from . import debian, ubuntu


@dataclass(frozen=True)
class BaseImage:
    disk: Path  # qcow2, used read-only as the build's backing file
    key: str  # sha256 of the inputs
    cached: bool  # True when reused from the cache
    facts: dict[str, Any]


def inputs(base: BaseConfig) -> dict[str, Any]:
    if base.provider in SUITES:
        return debian.inputs(base)
    return ubuntu.inputs(base)


def cache_entry(base: BaseConfig) -> tuple[str, Path]:
    """The inputs hash of this base and its cache directory (which may not exist yet)."""
    key = cache.inputs_hash(inputs(base))
    return key, cache.entry_dir("base", base.provider, key)


def ensure(base: BaseConfig, logs: Path) -> BaseImage:
    """The cached base for these inputs, built (or downloaded) first if missing.

    Parallel builds share the entry: one builds it, the others wait for its lock and reuse it."""
    host_tools.require("base")
    key, entry = cache_entry(base)

    def load(path: Path) -> BaseImage | None:
        if (path / "disk.qcow2").is_file() and (path / "base.json").is_file():
            return BaseImage(path / "disk.qcow2", key, True, json.loads((path / "base.json").read_text()))
        return None

    def build(scratch: Path) -> None:
        started = time.monotonic()
        provider = debian.build if base.provider in SUITES else ubuntu.fetch
        facts = provider(base, scratch, logs)
        facts["build_seconds"] = round(time.monotonic() - started, 1)
        (scratch / "base.json").write_text(json.dumps(facts, indent=2))

    image, reused = cache.reuse_or_build(entry, f"base {base.provider}", load=load, build=build)
    return replace(image, cached=reused)
