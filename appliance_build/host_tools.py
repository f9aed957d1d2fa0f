"""The host commands the pipeline runs, declared once in host-tools.tsv.

setup-host.sh installs the packages of that table; each stage calls `require()`
with its own name before it starts, so a missing command is an error naming the
command and its package (exit 2), never a FileNotFoundError traceback halfway
through a build.
"""

from __future__ import annotations

import glob
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import BuildError

TABLE = Path(__file__).with_name("host-tools.tsv")


class MissingToolError(BuildError):
    """A host command (or file) a stage needs is not installed."""


@dataclass(frozen=True)
class HostTool:
    name: str  # a command looked up on PATH, or an absolute path (glob) of a file
    package: str  # the Debian package that provides it
    stages: tuple[str, ...]

    @property
    def is_file(self) -> bool:
        return self.name.startswith("/")

    def present(self) -> bool:
        if self.is_file:
            return bool(glob.glob(self.name))
        return shutil.which(self.name) is not None


@cache
def table() -> tuple[HostTool, ...]:
    tools = []
    for number, line in enumerate(TABLE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3:
            raise BuildError(f"{TABLE}:{number}: expected 'command package stages', got {line!r}")
        name, package, stages = fields
        tools.append(HostTool(name, package, tuple(stages.split(","))))
    return tuple(tools)


def commands() -> set[str]:
    return {tool.name for tool in table() if not tool.is_file}


def packages() -> list[str]:
    """Every package of the table, each once, in table order (what setup-host.sh installs)."""
    return list(dict.fromkeys(tool.package for tool in table()))


def for_stage(stage: str) -> list[HostTool]:
    tools = [tool for tool in table() if stage in tool.stages]
    if not tools:
        raise BuildError(f"no host tools are declared for stage {stage!r} in {TABLE.name}")
    return tools


def require(*stages: str) -> None:
    """Raise MissingToolError naming every missing command and its package."""
    missing = [tool for stage in stages for tool in for_stage(stage) if not tool.present()]
    if not missing:
        return
    unique = list(dict.fromkeys(missing))
    lines = [f"{tool.name} (package {tool.package})" for tool in unique]
    install = " ".join(dict.fromkeys(tool.package for tool in unique))
    raise MissingToolError(
        f"missing on this host for {', '.join(stages)}:\n  "
        + "\n  ".join(lines)
        + f"\ninstall with ./setup-host.sh, or: apt-get install {install}"
    )


def main() -> int:
    """`python3 -m appliance_build.host_tools`: list every entry as ok/MISSING; exit 1 if any is
    missing (stdlib only, so it runs on a machine where only setup-host.sh has run)."""
    missing = [tool for tool in table() if not tool.present()]
    for tool in table():
        print(("MISSING " if tool in missing else "ok      ") + f"{tool.name} ({tool.package})")
    if missing:
        print(f"not installed: {', '.join(t.name for t in missing)}; run ./setup-host.sh")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
