"""Before passing a GPU through: is this host ready? (scripts/validate-host-gpu.sh)

The launcher runs the same script host operators run, for exactly the devices
asked for, and stops with its FIX lines when there is any error. One
implementation of the checks, in the script; this module only reads its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..paths import SCRIPTS_DIR

SCRIPT = SCRIPTS_DIR / "validate-host-gpu.sh"


@dataclass(frozen=True)
class HostReport:
    errors: int
    warnings: int
    findings: list[dict[str, Any]]

    def lines(self, level: str) -> list[str]:
        out = []
        for f in self.findings:
            if f.get("level") == level:
                out.append(f"{f.get('check')}: {f.get('message')}")
                if f.get("fix"):
                    out.append(f"  FIX: {f['fix']}")
        return out


def check_vfio_host(devices: tuple[str, ...], *, root: Path | None = None, path: str | None = None) -> HostReport:
    """Raise BuildError (with every FIX line) unless the host can pass `devices` through."""
    argv = ["bash", str(SCRIPT), "--json", "--devices", ",".join(devices)]
    if root is not None:
        argv += ["--root", str(root)]
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise BuildError(f"{SCRIPT.name} failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}") from None
    report = HostReport(int(doc["errors"]), int(doc["warnings"]), list(doc["findings"]))
    if report.errors:
        raise BuildError(
            f"this host is not ready to pass {', '.join(devices)} through ({report.errors} error(s)):\n  "
            + "\n  ".join(report.lines("error"))
        )
    return report
