"""Checks on a run's results file and the run summary (JSON + Markdown).

Pure functions: the unit tests feed them hand-made results documents.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("train", "eval")


def check_decreasing(values: list[float | None], label: str) -> list[str]:
    """Problems unless every value is a finite number smaller than the one before it."""
    if len(values) < 2:
        return [f"{label}: need at least 2 rounds to see it go down, got {len(values)}"]
    problems = []
    for index, value in enumerate(values, start=1):
        if value is None or not math.isfinite(value):
            problems.append(f"{label}: round {index} has no loss ({value!r})")
    if problems:
        return problems
    numbers = [float(v) for v in values if v is not None]
    for index in range(1, len(numbers)):
        if not numbers[index] < numbers[index - 1]:
            problems.append(
                f"{label} did not go down in round {index + 1}: {numbers[index]:.6g} after {numbers[index - 1]:.6g}"
            )
    return problems


def check_results(
    doc: dict[str, Any] | None,
    *,
    expected_rounds: int,
    expected_partitions: Iterable[int],
    expected_helper: str | None = None,
) -> list[str]:
    """Everything wrong with a run according to its results file; [] = passed.

    Passed means: the ServerApp finished, rounds 1..expected_rounds all ran,
    in every round both phases got a reply from exactly the expected partitions
    (no more, no fewer, no failures), the train and eval loss went down round
    over round, and (with `expected_helper`) every node trained through the
    image's device helper.
    """
    if doc is None:
        return ["no results file: the ServerApp did not start or could not write it"]
    partitions = sorted(set(expected_partitions))
    problems = []
    if doc.get("status") != "completed":
        problems.append(f"ServerApp status {doc.get('status')!r}: {doc.get('error') or 'no error recorded'}")
    rounds = sorted(doc.get("rounds", []), key=lambda r: int(r.get("round", 0)))
    numbers = [int(r.get("round", 0)) for r in rounds]
    if numbers != list(range(1, expected_rounds + 1)):
        problems.append(f"rounds {numbers} ran, expected 1..{expected_rounds}")
    for entry in rounds:
        number = entry.get("round")
        for phase in PHASES:
            clients = entry.get(f"{phase}_clients") or []
            ok = [c for c in clients if "error" not in c]
            got = sorted(int(c.get("partition_id", -1)) for c in ok)
            if got != partitions:
                problems.append(f"round {number} {phase}: replies from partitions {got}, expected {partitions}")
            failures = int(entry.get(f"{phase}_failures") or 0)
            if failures:
                errors = "; ".join(str(c.get("error")) for c in clients if "error" in c)
                problems.append(f"round {number} {phase}: {failures} node(s) failed: {errors}")
            if expected_helper is not None and phase == "train":
                for client in ok:
                    if client.get("helper") != expected_helper:
                        problems.append(
                            f"round {number}: partition {client.get('partition_id')} trained without the "
                            f"{expected_helper} helper (helper {client.get('helper')!r})"
                        )
    if rounds:
        problems += check_decreasing([r.get("train_loss") for r in rounds], "train loss")
        problems += check_decreasing([r.get("eval_loss") for r in rounds], "eval loss")
    return problems


def replies_per_partition(doc: dict[str, Any] | None) -> dict[int, int] | None:
    """Train + evaluate replies per partition in a results file (error replies too, matched by node id):
    the ClientApp tasks each node ran, one per message. None without a results file."""
    if doc is None:
        return None
    entries = [c for r in doc.get("rounds", []) for phase in PHASES for c in (r.get(f"{phase}_clients") or [])]
    partition_of = {c.get("node_id"): int(c["partition_id"]) for c in entries if "partition_id" in c}
    counts: dict[int, int] = {}
    for client in entries:
        partition = client.get("partition_id", partition_of.get(client.get("node_id")))
        if partition is not None:
            counts[int(partition)] = counts.get(int(partition), 0) + 1
    return counts


def load_results(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _stamp(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    return float(value) if isinstance(value, int | float) else None


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def round_table(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-round loss, node counts and times (s), for the summary.

    Times come from the ServerApp's per-round timestamps (seconds since it started): ``round_s``
    from the start of the train phase to the end of the eval phase, ``train_s``/``eval_s`` per
    phase (a round's first ClientApp launches are in its ``train_s``). A results file without
    ``eval_done_s`` (an older app, or a round that never finished) gets ``round_s`` from the next
    round's start (or the run's end).
    """
    if doc is None:
        return []
    table = []
    entries = sorted(doc.get("rounds", []), key=lambda r: int(r.get("round", 0)))
    for index, entry in enumerate(entries):
        started, train_done = _stamp(entry, "started_s"), _stamp(entry, "train_done_s")
        eval_started, eval_done = _stamp(entry, "eval_started_s"), _stamp(entry, "eval_done_s")
        following = _stamp(entries[index + 1], "started_s") if index + 1 < len(entries) else _stamp(doc, "duration_s")
        round_s = _span(started, eval_done) if eval_done is not None else _span(started, following)
        devices = sorted(
            {f"{c.get('device')} ({c.get('helper')})" for c in entry.get("train_clients", []) if "error" not in c}
        )
        table.append(
            {
                "round": entry.get("round"),
                "train_loss": entry.get("train_loss"),
                "eval_loss": entry.get("eval_loss"),
                "train_nodes": entry.get("train_nodes"),
                "eval_nodes": entry.get("eval_nodes"),
                "partitions": sorted(c.get("partition_id") for c in entry.get("train_clients", []) if "error" not in c),
                "devices": devices,
                "started_s": started,
                "round_s": round_s,
                "train_s": _span(started, train_done),
                "eval_s": _span(eval_started, eval_done),
            }
        )
    return table


@dataclass
class RunReport:
    run_id: int | None
    status: str
    seconds: float | None
    results_file: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # node -> e2e.launches.NodeLaunches.as_dict(): the run's ClientApp launches per task on that node
    launches: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ScenarioReport:
    name: str
    description: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float | None] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[RunReport] = field(default_factory=list)
    artifacts: str = ""

    def fail(self, problem: str) -> None:
        self.problems.append(problem)
        self.ok = False

    def finish(self) -> None:
        self.ok = not self.problems and not any(r.problems for r in self.runs)


@dataclass
class Summary:
    image: str
    nodes_mode: str
    rounds: int
    faults: bool
    started_at: str
    total_s: float | None = None
    ok: bool = False
    scenarios: list[ScenarioReport] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finish(self, total_s: float) -> None:
        self.total_s = round(total_s, 1)
        self.ok = bool(self.scenarios) and all(s.ok for s in self.scenarios)


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} s"


def _loss(value: Any) -> str:
    return "-" if value is None else f"{float(value):.6f}"


def render_markdown(summary: Summary) -> str:
    lines = [
        f"# Flower appliance e2e: {'PASSED' if summary.ok else 'FAILED'}",
        "",
        f"- image: `{summary.image}` (SuperNodes: {summary.nodes_mode})",
        f"- rounds per run: {summary.rounds}; faults: {'yes' if summary.faults else 'no'}",
        f"- started: {summary.started_at}; total time: {_seconds(summary.total_s)}",
        "",
        "| scenario | result | time to first node | all nodes | total |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in summary.scenarios:
        lines.append(
            f"| {s.name} | {'ok' if s.ok else 'FAILED'} | {_seconds(s.timings.get('first_node_s'))} "
            f"| {_seconds(s.timings.get('all_nodes_s'))} | {_seconds(s.timings.get('total_s'))} |"
        )
    for s in summary.scenarios:
        lines += ["", f"## {s.name}: {'ok' if s.ok else 'FAILED'}", "", s.description, ""]
        if s.nodes:
            lines += [
                "| node | partition | TLS | SSH login | boot to ready | launcher import | notes |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for name, node in s.nodes.items():
                lines.append(
                    f"| {name} | {node.get('partition_id')} | {node.get('tls')} | {_seconds(node.get('ssh_s'))} "
                    f"| {_seconds(node.get('ready_s'))} | {_seconds(node.get('launcher_import_s'))} "
                    f"| {node.get('note', '')} |"
                )
            lines.append("")
        for run in s.runs:
            lines.append(f"Run {run.run_id}: {run.status}, {_seconds(run.seconds)} (results `{run.results_file}`)")
            lines.append("")
            if run.rounds:
                lines += [
                    "| round | train loss | eval loss | nodes (train/eval) | partitions | devices "
                    "| round time | train | eval |",
                    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                ]
                for r in run.rounds:
                    lines.append(
                        f"| {r['round']} | {_loss(r['train_loss'])} | {_loss(r['eval_loss'])} "
                        f"| {r['train_nodes']}/{r['eval_nodes']} | {r['partitions']} | {', '.join(r['devices'])} "
                        f"| {_seconds(r.get('round_s'))} | {_seconds(r.get('train_s'))} | {_seconds(r.get('eval_s'))} |"
                    )
                lines.append("")
            if run.launches:
                lines += launch_table(run.launches)
            lines += [f"- problem: {p}" for p in run.problems]
        timings = ", ".join(f"{k} {_seconds(v)}" for k, v in s.timings.items())
        if timings:
            lines.append(f"Timings: {timings}")
        lines += [f"- note: {n}" for n in s.notes]
        lines += [f"- problem: {p}" for p in s.problems]
        if s.artifacts:
            lines.append(f"\nLogs: `{s.artifacts}`")
    return "\n".join(lines) + "\n"


def launch_table(launches: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown table of a run's ClientApp launches per node."""
    lines = [
        "| node | ClientApp launches | tasks answered | task tokens | most launches of one token "
        "| warm / fallback | SuperExec pids | exit statuses | slowest launch | slowest task |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, node in launches.items():
        if not node.get("log", True):
            replies = "-" if node.get("replies") is None else node.get("replies")
            lines.append(f"| {name} | no launch log | {replies} | - | - | - | - | - | - | - |")
            continue
        modes = node.get("modes") or {}
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted((node.get("exit_statuses") or {}).items()))
        lines.append(
            f"| {name} | {node.get('launches')} | {'-' if node.get('replies') is None else node.get('replies')} "
            f"| {node.get('task_count')} | {node.get('max_per_task')} "
            f"| {modes.get('warm', 0)} / {modes.get('fallback', 0)} | {node.get('superexec_pids')} | {statuses or '-'} "
            f"| {_seconds(node.get('launch_s_max'))} | {_seconds(node.get('task_s_max'))} |"
        )
    return [*lines, ""]


def write(summary: Summary, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "summary.json", directory / "summary.md"
    json_path.write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n")
    md_path.write_text(render_markdown(summary))
    return json_path, md_path


ACTIVATION = 'POST /v1/fleet/activate-node HTTP/1.1" 200'


def node_activations(superlink_log: str) -> list[float]:
    """Wall-clock times (epoch seconds, UTC) at which the SuperLink activated a SuperNode.

    Read from uvicorn's access lines in the SuperLink log, e.g.
    ``2026-11-22T06:59:49.798Z INFO [uvicorn.access] 127.0.0.1:49230 - "POST /v1/fleet/activate-node HTTP/1.1" 200``.
    """
    import datetime as dt

    times = []
    for line in superlink_log.splitlines():
        if ACTIVATION not in line:
            continue
        stamp = line.split(" ", 1)[0]
        try:
            when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        times.append(when.timestamp())
    return sorted(times)


def connect_times(activations: list[float], since: float, count: int) -> tuple[float | None, float | None]:
    """Seconds from `since` (epoch) to the first and to the `count`-th activation after it."""
    after = [t - since for t in activations if t >= since]
    first = round(after[0], 1) if after else None
    nth = round(after[count - 1], 1) if len(after) >= count else None
    return first, nth
