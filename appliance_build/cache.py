"""A content-addressed cache that parallel builds share: an entry is a directory named by the
hash of its inputs.

Each entry has a lock file beside it (`<entry>.lock`, `fcntl.flock`). Whoever holds the lock may
build the entry; a second build of the same entry waits, saying for whom, and then reuses what
the first one finished. The entry is built in `<entry>.partial` and renamed into place only when
complete; a `.partial` found while holding the lock was left by a process that died, so removing
it is safe. Builds of different entries never wait for each other. Lock files stay (removing a
lock file that another process is waiting on would let a third one take a second lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .paths import cache_root
from .progress import say

WAIT_HEARTBEAT_SECONDS = 20.0
T = TypeVar("T")


def inputs_hash(inputs: dict[str, Any]) -> str:
    """A stable sha256 of JSON-able inputs (key order does not matter)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def entry_dir(kind: str, name: str, key: str) -> Path:
    return cache_root() / kind / f"{name}-{key[:16]}"


def write_atomic(path: Path, text: str) -> None:
    """Write `path` so that a concurrent reader sees the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(text)
    scratch.rename(path)


def _holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    since = time.time() - float(info.get("since", time.time()))
    return f"pid {info.get('pid', '?')} ({info.get('command', '?')}, holding it for {since:.0f} s)"


@contextlib.contextmanager
def locked(entry: Path, what: str) -> Iterator[None]:
    """Hold the entry's lock; wait (saying who holds it) while another process does."""
    lock_file = entry.with_name(entry.name + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a+") as handle:
        started = time.monotonic()
        next_beat = 0.0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= next_beat:
                    say(
                        f"{what}: waiting for {_holder(lock_file)}, which is building {entry.name} "
                        f"(waited {now - started:.0f} s)"
                    )
                    next_beat = now + WAIT_HEARTBEAT_SECONDS
                time.sleep(0.5)
        waited = time.monotonic() - started
        if waited >= 1:
            say(f"{what}: lock on {entry.name} acquired after waiting {waited:.0f} s")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": time.time(), "command": " ".join(sys.argv[:3])}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def new_entry(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes `final` only if the block succeeds.

    The caller holds `locked(final)`, so a `.partial` already there is a dead process's.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(final.name + ".partial")
    if scratch.exists():
        say(f"removing {scratch.name}, left by a build that did not finish")
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    scratch.rename(final)


def reuse_or_build(
    entry: Path, what: str, *, load: Callable[[Path], T | None], build: Callable[[Path], object]
) -> tuple[T, bool]:
    """The entry's content, built under its lock if it is not complete yet.

    `load(entry)` returns the finished entry's content or None; `build(scratch)` fills a scratch
    directory that becomes the entry. Returns (content, True when reused).
    """
    found = load(entry)
    if found is not None:
        say(f"{what}: cached {entry}")
        return found, True
    with locked(entry, what):
        found = load(entry)  # finished by the process we waited for
        if found is not None:
            say(f"{what}: reusing {entry}, which another build just finished")
            return found, True
        say(f"{what}: not cached, building into {entry}")
        with new_entry(entry) as scratch:
            build(scratch)
        content = load(entry)
        if content is None:
            raise RuntimeError(f"{entry} is incomplete right after it was built")
        return content, False
