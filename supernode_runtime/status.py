"""Status for people: ``/run/flower/status.json``, ``status.txt`` and the login banner.

The banner goes to ``/run/motd.d/50-flower-supernode``: Debian 12's pam_motd
(``session optional pam_motd.so noupdate`` in /etc/pam.d/sshd and login) shows
files from /etc/motd.d, /run/motd.d and /usr/lib/motd.d. /run is a tmpfs, so a
stale banner never survives a reboot. Secrets are masked before anything is
written here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from supernode_runtime.fsutil import atomic_write
from supernode_runtime.paths import Paths

SCHEMA = 1


def printable(text: str) -> str:
    """Escape control characters so values cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


@dataclass
class StepRecord:
    """One boot step and its outcome (ok, warning, error, skipped)."""

    number: int
    total: int
    name: str
    outcome: str
    detail: str = ""

    def line(self) -> str:
        text = f"[step {self.number}/{self.total}] {self.name}: {self.outcome}"
        return f"{text} {printable(self.detail)}" if self.detail else text


@dataclass
class StatusReport:
    """Everything the boot sequence records about its run."""

    generated_at: str
    steps: list[StepRecord] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    superlink: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)
    build: dict[str, str] | None = None
    launch_spec: str | None = None
    supernode_will_start: bool = False

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["schema"] = SCHEMA
        return doc


def _error_line(err: dict[str, str]) -> str:
    if err.get("message"):
        return printable(err["message"])
    if err.get("variable"):
        return printable(
            f"{err['variable']}={err.get('value', '')}: {err.get('reason', '')}; accepted: {err.get('accepted', '')}"
        )
    return ""


def render_text(doc: dict[str, Any]) -> str:
    """Human-readable status from a status document (as written to status.json)."""
    start = "will start" if doc.get("supernode_will_start") else "NOT started"
    lines = [
        f"Flower SuperNode appliance - boot status ({doc.get('generated_at', '?')})",
        f"SuperNode container: {start}",
        "",
        "Boot steps:",
    ]
    for step in doc.get("steps", []):
        lines.append("  " + StepRecord(**step).line())
    if doc.get("errors"):
        lines += ["", "Errors:"] + [f"  - {_error_line(e)}" for e in doc["errors"]]
    if doc.get("warnings"):
        lines += ["", "Warnings:"] + [f"  - {printable(w)}" for w in doc["warnings"]]
    superlink = doc.get("superlink") or {}
    gpu = doc.get("gpu") or {}
    lines += [
        "",
        f"SuperLink: {superlink.get('address') or '-'} ({superlink.get('source', '-')})",
        f"GPU: requested={'YES' if gpu.get('requested') else 'NO'} "
        f"FL_GPU_AVAILABLE={gpu.get('FL_GPU_AVAILABLE', 'NO')} ({gpu.get('reason', '-')})",
    ]
    if doc.get("build"):
        build = doc["build"]
        lines.append(f"Image: {build.get('supernode_image')} ({build.get('variant')})")
    if doc.get("config"):
        lines += ["", "Effective configuration (secrets masked):"]
        for name, item in doc["config"].items():
            value = item.get("value")
            shown = "(not set)" if value is None or value == "" else printable(str(value))
            lines.append(f"  {name} = {shown}    [{item.get('source', '')}]")
    return "\n".join(lines) + "\n"


def render_motd(doc: dict[str, Any]) -> str:
    """Short login banner."""
    if doc.get("supernode_will_start"):
        gpu = (doc.get("gpu") or {}).get("FL_GPU_AVAILABLE", "NO")
        superlink = (doc.get("superlink") or {}).get("address", "?")
        head = f"Flower SuperNode: configured (SuperLink {superlink}, GPU {gpu})."
    else:
        head = "Flower SuperNode: NOT started - the boot configuration has errors."
    lines = [head]
    lines += [f"  ERROR {_error_line(e)}" for e in doc.get("errors", [])]
    lines += [f"  warning: {printable(w)}" for w in doc.get("warnings", [])[:5]]
    lines.append("Details: flower-appliance status   (journalctl -u flower-appliance-configure)")
    return "\n".join(lines) + "\n"


def write_status(paths: Paths, report: StatusReport) -> None:
    """Write status.json, status.txt and the login banner atomically."""
    doc = report.as_dict()
    atomic_write(paths.status_json, json.dumps(doc, indent=2) + "\n")
    atomic_write(paths.status_text, render_text(doc))
    atomic_write(paths.motd_file, render_motd(doc))


def read_status(paths: Paths) -> dict[str, Any] | None:
    """Status document, or None when the boot sequence has not written one."""
    try:
        doc = json.loads(paths.status_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None
