"""Where things live: the repository, the build tree and the cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
TEMPLATES_DIR = REPO / "templates"
PROVISION_DIR = REPO / "provision"
RUNTIME_DIR = REPO / "supernode_runtime"
SCRIPTS_DIR = REPO / "scripts"


def build_root() -> Path:
    """The git-ignored output tree (override with FLOWER_BUILD_DIR)."""
    return Path(os.environ.get("FLOWER_BUILD_DIR", REPO / "build"))


def cache_root() -> Path:
    """Base images and downloads, reused across builds and checkouts.

    $FLOWER_CACHE_DIR, else $XDG_CACHE_HOME/flower-appliance, else ~/.cache/flower-appliance.
    """
    if "FLOWER_CACHE_DIR" in os.environ:
        return Path(os.environ["FLOWER_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "flower-appliance"
