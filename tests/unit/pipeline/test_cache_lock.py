"""The shared cache under parallel builds: real processes racing on one entry (a slow fake
builder), builds of different entries side by side, and what a dead builder leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance_build import cache

# One builder process: reuse_or_build on ENTRY; the build sleeps, then records who built it.
WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from appliance_build import cache

    entry, seconds, events = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])

    def note(what):
        with events.open("a") as out:
            out.write(json.dumps({"pid": os.getpid(), "what": what, "t": time.time()}) + "\\n")

    def load(path):
        done = path / "built-by"
        return done.read_text() if done.is_file() else None

    def build(scratch):
        note("build-start")
        (scratch / "half").write_text("x")
        time.sleep(seconds)
        (scratch / "built-by").write_text(str(os.getpid()))
        note("build-end")

    content, reused = cache.reuse_or_build(entry, "test entry", load=load, build=build)
    note("reused" if reused else "built")
    print("CONTENT", content, flush=True)
    """
)


def _start(entry: Path, seconds: float, events: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(entry), str(seconds), str(events)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for(events: Path, what: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.exists():
            for event in _events(events):
                if event["what"] == what:
                    return event
        time.sleep(0.05)
    raise AssertionError(f"no {what!r} event within {timeout} s")


def test_two_processes_one_entry_build_once_and_the_second_says_whom_it_waits_for(tmp_path: Path) -> None:
    entry, events = tmp_path / "cache" / "base" / "debian-12-0123", tmp_path / "events.jsonl"
    first = _start(entry, 3.0, events)
    builder = _wait_for(events, "build-start")
    second = _start(entry, 3.0, events)
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, out_first + out_second

    log = _events(events)
    assert [e["what"] for e in log].count("build-start") == 1  # built once
    assert {(e["pid"], e["what"]) for e in log} >= {(first.pid, "built"), (second.pid, "reused")}
    assert f"CONTENT {builder['pid']}" in out_first and f"CONTENT {builder['pid']}" in out_second
    assert f"waiting for pid {first.pid}" in out_second
    assert "reusing" in out_second and "which another build just finished" in out_second
    assert not entry.with_name(entry.name + ".partial").exists()


def test_different_entries_never_wait_for_each_other(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    one = _start(tmp_path / "cache" / "base" / "a-1", 2.0, events)
    two = _start(tmp_path / "cache" / "base" / "b-2", 2.0, events)
    for proc in (one, two):
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert "waiting for" not in output
    log = _events(events)
    starts = sorted(float(e["t"]) for e in log if e["what"] == "build-start")  # type: ignore[arg-type]
    ends = sorted(float(e["t"]) for e in log if e["what"] == "build-end")  # type: ignore[arg-type]
    assert len(starts) == 2 and starts[1] < ends[0]  # the second build began before the first ended


def test_a_killed_builder_releases_the_lock_and_its_partial_is_cleaned_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry, events = tmp_path / "cache" / "container" / "flwr-1", tmp_path / "events.jsonl"
    victim = _start(entry, 60.0, events)
    _wait_for(events, "build-start")
    partial = entry.with_name(entry.name + ".partial")
    assert (partial / "half").is_file()
    os.kill(victim.pid, signal.SIGKILL)  # no clean-up code runs: the kernel drops its flock
    victim.communicate(timeout=30)

    def build(scratch: Path) -> None:
        assert not (scratch / "half").exists()  # a fresh scratch, not the dead build's
        (scratch / "built-by").write_text("me")

    content, reused = cache.reuse_or_build(
        entry,
        "test entry",
        load=lambda p: (p / "built-by").read_text() if (p / "built-by").is_file() else None,
        build=build,
    )
    assert (content, reused) == ("me", False)
    assert "left by a build that did not finish" in capsys.readouterr().out
    assert not partial.exists()


def test_a_failed_build_leaves_no_entry_and_the_next_one_builds(tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "base" / "x-1"

    def load(path: Path) -> str | None:
        return (path / "ok").read_text() if (path / "ok").is_file() else None

    def fail(scratch: Path) -> None:
        (scratch / "half").write_text("x")
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError, match="stage failed"):
        cache.reuse_or_build(entry, "t", load=load, build=fail)
    assert not entry.exists() and not entry.with_name("x-1.partial").exists()
    content, reused = cache.reuse_or_build(entry, "t", load=load, build=lambda s: (s / "ok").write_text("2"))
    assert (content, reused) == ("2", False)
    assert cache.reuse_or_build(entry, "t", load=load, build=fail) == ("2", True)


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "accel-probe.json"
    cache.write_atomic(target, "one")
    cache.write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["accel-probe.json"]
