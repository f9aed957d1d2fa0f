"""NVIDIA's support status of a driver branch, from appliance_build/nvidia_branches.toml.

One function, `driver_record`, computes what the manifest's GPU record says about the driver
(source, branch, version, kernel-module flavour, end of support, status); the build's warning,
the release notes, the marketplace description and `nox -s publish` read that record.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("nvidia_branches.toml")
LIFECYCLE_URL = "https://docs.nvidia.com/datacenter/tesla/drivers/supported-drivers-and-cuda-toolkit-versions.html"
MONTH_RE = re.compile(r"\A([0-9]{4})-(0[1-9]|1[0-2])\Z", re.ASCII)
FINGERPRINT_RE = re.compile(r"\A[0-9A-F]{40}\Z", re.ASCII)
STATUSES = ("supported", "past-support", "unknown")


@dataclass(frozen=True)
class Branch:
    name: str
    type: str  # LTSB | PB | NFB
    support_ends: str  # YYYY-MM, "" when the table only says it ended
    ended: bool

    def status(self, today: dt.date) -> str:
        if self.ended:
            return "past-support"
        year, month = (int(x) for x in self.support_ends.split("-"))
        # supported through the last day of the month the table names
        return "supported" if (today.year, today.month) <= (year, month) else "past-support"


@dataclass(frozen=True)
class Repository:
    provider: str  # debian-12 | debian-13
    url: str
    key_file: str
    fingerprint: str

    @property
    def key_url(self) -> str:
        return self.url.rstrip("/") + "/" + self.key_file


@dataclass(frozen=True)
class DriverRecord:
    """The manifest's GPU driver fields (same names as the manifest's typed record)."""

    driver_source: str  # nvidia-repo | debian
    driver_branch: str
    driver_version: str  # the exact package version installed ("" until the build knows it)
    kernel_modules: str  # open | proprietary
    support_ends: str  # YYYY-MM or ""
    support_status: str  # supported | past-support | unknown

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@cache
def _table() -> dict[str, Any]:
    return tomllib.loads(TABLE.read_text())


def branches() -> dict[str, Branch]:
    out = {}
    for name, row in _table()["branch"].items():
        ends, ended = str(row.get("support_ends", "")), bool(row.get("ended", False))
        if ends and MONTH_RE.match(ends) is None:
            raise ValueError(f"{TABLE}: branch.{name}.support_ends must be YYYY-MM, got {ends!r}")
        if not ends and not ended:
            raise ValueError(f"{TABLE}: branch.{name} needs support_ends (YYYY-MM) or ended = true")
        out[name] = Branch(name, str(row["type"]), ends, ended)
    return out


def repositories() -> dict[str, Repository]:
    out = {}
    for provider, row in _table()["repository"].items():
        if FINGERPRINT_RE.match(row["fingerprint"]) is None:
            raise ValueError(f"{TABLE}: repository.{provider}.fingerprint must be 40 upper-case hex digits")
        out[provider] = Repository(provider, row["url"], row["key_file"], row["fingerprint"])
    return out


def support(branch: str, today: dt.date | None = None) -> tuple[str, str]:
    """(support_ends, support_status) of `branch` on `today`."""
    row = branches().get(branch)
    if row is None:
        return "", "unknown"
    return row.support_ends, row.status(today or dt.date.today())


def driver_record(
    driver_source: str,
    driver_branch: str,
    kernel_modules: str,
    driver_version: str = "",
    today: dt.date | None = None,
) -> DriverRecord:
    ends, status = support(driver_branch, today)
    return DriverRecord(driver_source, driver_branch, driver_version, kernel_modules, ends, status)


def describe(record: dict[str, Any]) -> str:
    """One sentence on the branch's support, for release notes and the marketplace description."""
    branch, ends, status = record.get("driver_branch"), record.get("support_ends"), record.get("support_status")
    if status == "supported":
        return f"NVIDIA supports driver branch R{branch} until {ends} ({LIFECYCLE_URL})"
    if status == "past-support":
        until = f" (support ended {ends})" if ends else " (no longer in NVIDIA's lifecycle table)"
        return f"NVIDIA no longer supports driver branch R{branch}{until}"
    return f"NVIDIA's support status of driver branch R{branch} is unknown (not in {TABLE.name})"


def from_manifest(gpu: Any, today: dt.date | None = None) -> dict[str, Any]:
    """The driver record of a manifest's GPU record (artifacts.GpuRecord), its support status
    computed for `today` from the table: a branch can pass its end between build and publishing."""
    ends, status = support(str(gpu.driver_branch), today)
    return {
        "driver_source": gpu.driver_source,
        "driver_branch": gpu.driver_branch,
        "driver_version": gpu.driver_version,
        "kernel_modules": gpu.kernel_modules,
        "support_ends": ends,
        "support_status": status,
    }
