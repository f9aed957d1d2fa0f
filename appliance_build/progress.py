"""Say what the pipeline is doing: stage banners, timings and long-running commands.

Long commands stream their output to a log file; the terminal gets a heartbeat
line with the elapsed time and the command's latest output line, so a person
knows a ten-minute TCG step is alive and where its full log is.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import BuildError

HEARTBEAT_SECONDS = 20.0


def say(message: str) -> None:
    print(f"[flower-build] {message}", flush=True)


def interrupt_on_sigterm() -> None:
    """Treat SIGTERM (a cancelled CI job, `kill`) exactly like Ctrl-C: KeyboardInterrupt, so the
    context managers holding VMs, Packer and temp dirs clean up and the interrupt handlers run."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def run_main(command: Callable[[], int], *, interrupted: str) -> int:
    """The tail of every command line of the pipeline (build and publish): run `command` with
    SIGTERM turned into Ctrl-C, so its context managers clean up either way; a BuildError
    (ConfigError, PublishError) is printed as "error: ..." with exit code 2, an interrupt
    prints `interrupted` with exit code 130 (128 + SIGINT, as a shell reports Ctrl-C)."""
    interrupt_on_sigterm()
    try:
        return int(command())
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130


class StageTimer:
    """Records the duration of each named stage (seconds), for the manifest."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        say(f"== {name}")
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = round(time.monotonic() - start, 1)
            self.durations[name] = elapsed
            say(f"== {name}: {elapsed:.1f} s")


def run(
    argv: Sequence[str | os.PathLike[str]],
    log: Path,
    *,
    label: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Run a command, output appended to `log`, heartbeat on the terminal.

    The child gets its own process group; on failure, timeout or Ctrl-C the
    whole group is killed, so no QEMU or Packer is left behind.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [str(a) for a in argv]
    start = time.monotonic()
    last_line = ""
    next_beat = start + HEARTBEAT_SECONDS
    with log.open("ab") as sink:
        sink.write(f"\n$ {' '.join(args)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                for _key, _ in selector.select(timeout=1.0):
                    chunk = proc.stdout.read()
                    if chunk:
                        sink.write(chunk)
                        sink.flush()
                        lines = [ln for ln in chunk.decode(errors="replace").splitlines() if ln]
                        if lines:
                            last_line = lines[-1].strip()[:110]
                now = time.monotonic()
                if proc.poll() is not None:
                    rest = proc.stdout.read()
                    if rest:
                        sink.write(rest)
                    break
                if timeout is not None and now - start > timeout:
                    raise BuildError(f"{label}: timed out after {timeout:.0f} s (log: {log})")
                if now >= next_beat:
                    say(f"   {label}: {now - start:.0f} s ... {last_line}")
                    next_beat = now + HEARTBEAT_SECONDS
        except BaseException:
            kill_group(proc)
            raise
        finally:
            selector.close()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise BuildError(f"{label} failed (exit {proc.returncode}); last lines of {log}:\n  " + "\n  ".join(tail))


def kill_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate a child's process group, then kill it if it does not go."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def warn(message: str) -> None:
    print(f"[flower-build] WARNING: {message}", file=sys.stderr, flush=True)
