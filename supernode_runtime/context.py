"""Reading the OpenNebula context: CONTEXT CD, OneGate token, local override file.

Where the values come from, in order (later sources override earlier ones):

1. ``context.sh`` from an already-mounted context directory (``/run/one-context``
   or ``/mnt/context``) if one holds ``context.sh``; otherwise the CD labelled
   ``CONTEXT`` (``/dev/disk/by-label/CONTEXT``) is mounted read-only on a
   temporary directory below ``/run/flower``, read, and unmounted again.
2. ``/etc/flower/context.override`` (same ``KEY='value'`` format) for platforms
   without OpenNebula, or to override single values.

``token.txt`` next to ``context.sh`` holds the OneGate token. Network and SSH
keys are left to cloud-init's OpenNebula datasource.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from supernode_runtime.commands import Runner, run_command
from supernode_runtime.context_parser import ParseProblem, parse_context
from supernode_runtime.paths import Paths
from supernode_runtime.variables import looks_like_ours

CONTEXT_FILE = "context.sh"
TOKEN_FILE = "token.txt"
MOUNT_TIMEOUT = 30.0


class ContextError(Exception):
    """The context exists but could not be read (mount or read failure)."""


@dataclass
class SourceValues:
    """Values read from one file, with the statements that were not read."""

    path: str
    values: dict[str, str]
    problems: list[ParseProblem]


@dataclass
class Context:
    """What the boot sequence knows from the context sources."""

    cd: SourceValues | None = None
    override: SourceValues | None = None
    token: str | None = None
    origin: str = "none"
    notes: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[SourceValues]:
        """Sources, lowest precedence first."""
        return [s for s in (self.cd, self.override) if s is not None]

    def raw(self, key: str) -> str | None:
        """Value of ``key`` with the override file taking precedence (no ONEAPP_ logic)."""
        for layer in reversed(self.layers):
            if key in layer.values:
                return layer.values[key]
        return None

    @property
    def errors(self) -> list[str]:
        """Unread statements that could carry one of our variables (the boot stops)."""
        return [f"{layer.path}: {p}" for layer in self.layers for p in layer.problems if p.error]

    @property
    def warnings(self) -> list[str]:
        """Unread statements that cannot carry one of our variables."""
        return [f"{layer.path}: {p}" for layer in self.layers for p in layer.problems if not p.error]


def _utf8_problems(data: bytes) -> list[ParseProblem]:
    """One problem per line that is not valid UTF-8 (an error when it looks like ours)."""
    problems = []
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        try:
            raw_line.decode("utf-8")
        except UnicodeDecodeError:
            text = raw_line.decode("utf-8", errors="replace")
            ours = looks_like_ours(text.split("=", 1)[0])
            problems.append(ParseProblem(number, "is not valid UTF-8", None, ours))
    return problems


def parse_context_bytes(label: str, data: bytes) -> SourceValues:
    """Parse ``context.sh`` bytes; invalid UTF-8 is reported per line, then replaced."""
    text = data.decode("utf-8", errors="replace")
    parsed = parse_context(text)
    problems = sorted([*_utf8_problems(data), *parsed.problems], key=lambda p: p.line)
    return SourceValues(label, parsed.values, problems)


def read_context_file(path: Path) -> SourceValues:
    """Read and parse one ``KEY='value'`` file (raises OSError when unreadable)."""
    return parse_context_bytes(str(path), path.read_bytes())


def _read_token(directory: Path) -> str | None:
    try:
        token = (directory / TOKEN_FILE).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return token or None


@contextlib.contextmanager
def mounted_context_cd(paths: Paths, runner: Runner = run_command) -> Iterator[Path]:
    """Mount the CONTEXT CD read-only on a temporary directory; unmount afterwards."""
    paths.run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    mount_dir = Path(tempfile.mkdtemp(prefix="context-", dir=paths.run_dir))
    device = str(paths.context_device)
    result = runner(["mount", "-o", "ro", device, str(mount_dir)], MOUNT_TIMEOUT)
    if not result.ok:
        with contextlib.suppress(OSError):
            mount_dir.rmdir()
        detail = (result.stderr or result.stdout).strip()
        raise ContextError(f"mount {device} failed (exit {result.returncode}): {detail}")
    try:
        yield mount_dir
    finally:
        runner(["umount", str(mount_dir)], MOUNT_TIMEOUT)
        with contextlib.suppress(OSError):
            mount_dir.rmdir()


def _read_cd_dir(directory: Path, label: str) -> tuple[SourceValues, str | None]:
    try:
        source = read_context_file(directory / CONTEXT_FILE)
    except OSError as exc:
        raise ContextError(f"cannot read {directory / CONTEXT_FILE}: {exc}") from exc
    source.path = label
    return source, _read_token(directory)


def load_context(paths: Paths, runner: Runner = run_command) -> Context:
    """Collect the context from the CD (or a mounted copy) and the override file.

    Raises :class:`ContextError` when a context exists but cannot be read; a
    machine with no context at all gives an empty :class:`Context`.
    """
    ctx = Context()
    for directory in paths.premounted_context_dirs:
        if (directory / CONTEXT_FILE).is_file():
            ctx.cd, ctx.token = _read_cd_dir(directory, str(directory / CONTEXT_FILE))
            ctx.origin = str(directory)
            break
    else:
        if paths.context_device.exists():
            with mounted_context_cd(paths, runner) as mount_dir:
                label = f"{paths.context_device}:{CONTEXT_FILE}"
                ctx.cd, ctx.token = _read_cd_dir(mount_dir, label)
            ctx.origin = str(paths.context_device)
        else:
            ctx.notes.append(f"no OpenNebula context ({paths.context_device} not present)")
    if paths.override_file.is_file():
        try:
            ctx.override = read_context_file(paths.override_file)
        except OSError as exc:
            raise ContextError(f"cannot read {paths.override_file}: {exc}") from exc
    return ctx


def context_from_files(path: Path, override: Path | None = None) -> Context:
    """The context as the boot would see it from a copy of ``context.sh`` (its
    ``token.txt`` next to it) and an optional override file (check-context).

    Raises OSError when a file cannot be read.
    """
    ctx = Context(cd=read_context_file(path), token=_read_token(path.parent), origin=str(path))
    if override is not None:
        ctx.override = read_context_file(override)
    return ctx
