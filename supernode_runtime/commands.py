"""The one place the boot sequence runs external programs (besides the
``openssl x509`` check in :mod:`.certs`, which feeds the certificate on stdin).

Programs are always started from an argv list with ``shell=False``; no value from
the context is ever put into a shell command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NOT_FOUND = 127
TIMED_OUT = 124


@dataclass(frozen=True)
class CommandResult:
    """Exit status and captured output of a finished program."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


Runner = Callable[[Sequence[str], float], CommandResult]


def which(name: str) -> str | None:
    """Look ``name`` up on the current ``PATH`` (read at call time)."""
    return shutil.which(name, path=os.environ.get("PATH", os.defpath))


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run ``argv`` (a list, never a shell string) and capture its output.

    A program missing from PATH gives returncode 127, a timeout 124.
    """
    args = list(argv)
    if not args or not all(isinstance(a, str) for a in args):
        raise TypeError("argv must be a non-empty list of str")
    executable = args[0] if os.sep in args[0] else which(args[0])
    if executable is None:
        return CommandResult(NOT_FOUND, "", f"{args[0]}: not found on PATH")
    try:
        proc = subprocess.run(
            [executable, *args[1:]],
            shell=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return CommandResult(TIMED_OUT, "", f"{args[0]}: timed out after {timeout:g}s")
    except OSError as exc:
        return CommandResult(NOT_FOUND, "", f"{args[0]}: {exc.strerror or exc}")
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)
