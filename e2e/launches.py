"""ClientApp launches per node and per task, from the warm launcher's launch log.

The SuperNode container runs ``tini -- python -m supernode_container.entrypoint <flower-supernode
options>``; the entrypoint, the ``flwr-clientapp`` shim and the warm launcher append one JSON line
per event to ``$FL_WARM_CLIENTAPP_LOG`` (supernode_container/flwr_clientapp_shim.py ``log_event``):
``{"event": ..., "t": <unix time>, "pid": ..., ...}``. The events read here:

- ``ready`` (launcher): its imports are done and its socket is in place (``import_seconds``);
- ``shim`` (one per ``flwr-clientapp`` process that flower-superexec started, i.e. one per launch):
  ``mode`` ``warm`` (handed to the launcher), ``fallback`` (exec'd the real flwr-clientapp) or
  ``signalled`` (ended by a signal during the hand-over), ``task`` (a digest of the task's token,
  never the token) and ``parent_pid`` (the SuperExec's pid, one per node);
- ``start`` (the forked child, about to call flwr's ``flwr_clientapp()``): ``shim_started``, when
  the shim process was exec'd, so ``t - shim_started`` is a warm launch's latency;
- ``exit`` (launcher, child reaped): ``seconds`` from fork to exit, the task's whole run;
- ``shim-exit``: the ClientApp's exit status.

flower-superexec claims a task for ``HEARTBEAT_DEFAULT_INTERVAL`` = 30 s (flwr/common/constant.py);
a ClientApp that has not pulled it by then is too late, the task goes back to PENDING and the
SuperExec claims it again and launches another process (flwr/supercore/superexec/executor/
subprocess_executor.py). Every claim mints a new token (``claim_task`` in
flwr/supercore/corestate/in_memory_corestate.py: ``secrets.token_hex``), so a relaunched task shows
up under a *new* digest: the pile-up is seen by comparing a node's launches with the tasks it
answered (one ClientApp per message, i.e. per train/evaluate reply in the ServerApp's results). The
same digest launched twice is the other double launch (a shim that handed its task over and then
fell back). A shim that fell back ran the slow stock start-up that causes pile-ups. Pure
functions: the unit tests feed them JSON lines.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

READY, LAUNCH, EXIT, CHILD_START, CHILD_EXIT = "ready", "shim", "shim-exit", "start", "exit"
WARM, FALLBACK = "warm", "fallback"
NO_TASK = "?"  # a command line the shim could not parse has no token digest


def parse_events(text: str) -> tuple[list[dict[str, Any]], int]:
    """The events of a launch log, and how many lines were not JSON objects (e.g. a torn last line)."""
    events: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(doc, dict) and isinstance(doc.get("event"), str):
            events.append(doc)
        else:
            bad += 1
    return events, bad


def since(events: list[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    """The events after the first `offset` ones (a run's, given the count before it started).

    A log shorter than `offset` is a new one (the container was restarted, e.g. after a SuperLink
    restart without a state DB, and its private directory with it): all of it is new.
    """
    return events[offset:] if len(events) >= offset else events


def launcher_ready(events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The last ``ready`` event (the launcher that serves now), None while it has not finished importing."""
    ready = [e for e in events if e.get("event") == READY]
    return ready[-1] if ready else None


@dataclass
class NodeLaunches:
    """One node's ClientApp launches in one run."""

    log: bool = True  # False: no launch log could be read
    launches: int = 0
    tasks: dict[str, int] = field(default_factory=dict)  # token digest -> launches
    modes: dict[str, int] = field(default_factory=dict)  # warm / fallback / signalled -> launches
    fallback_reasons: list[str] = field(default_factory=list)
    superexec_pids: list[int] = field(default_factory=list)
    exit_statuses: dict[str, int] = field(default_factory=dict)  # status -> count
    launcher_starts: int = 0  # ``ready`` events in the run: > 0 means it (re)started meanwhile
    launch_s_max: float | None = None  # slowest warm launch: shim exec'd -> child calls flwr_clientapp()
    task_s_max: float | None = None  # slowest task: fork -> child reaped
    bad_lines: int = 0

    @property
    def max_per_task(self) -> int:
        return max(self.tasks.values(), default=0)

    @property
    def relaunched(self) -> dict[str, int]:
        return {task: n for task, n in self.tasks.items() if n > 1}

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(task_count=len(self.tasks), max_per_task=self.max_per_task)
        return doc


def count(events: Iterable[dict[str, Any]], bad_lines: int = 0) -> NodeLaunches:
    """Launches per task (grouped by the token digest) and per mode, of one node's events."""
    tasks: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    reasons: list[str] = []
    pids: set[int] = set()
    starts = 0
    launch_s: list[float] = []
    task_s: list[float] = []
    for event in events:
        kind = event.get("event")
        if kind == READY:
            starts += 1
        elif kind == LAUNCH:
            tasks[str(event.get("task") or NO_TASK)] += 1
            mode = str(event.get("mode") or "?")
            modes[mode] += 1
            if mode == FALLBACK and len(reasons) < 5:
                reasons.append(str(event.get("reason") or ""))
            if isinstance(event.get("parent_pid"), int):
                pids.add(event["parent_pid"])
        elif kind == EXIT:
            statuses[str(event.get("status"))] += 1
        elif kind == CHILD_START and isinstance(event.get("shim_started"), int | float):
            launch_s.append(float(event["t"]) - float(event["shim_started"]))
        elif kind == CHILD_EXIT and isinstance(event.get("seconds"), int | float):
            task_s.append(float(event["seconds"]))
    return NodeLaunches(
        launches=sum(tasks.values()),
        tasks=dict(tasks),
        modes=dict(modes),
        fallback_reasons=reasons,
        superexec_pids=sorted(pids),
        exit_statuses=dict(statuses),
        launcher_starts=starts,
        launch_s_max=round(max(launch_s), 3) if launch_s else None,
        task_s_max=round(max(task_s), 3) if task_s else None,
        bad_lines=bad_lines,
    )


def problems(
    name: str,
    launches: NodeLaunches,
    *,
    took_part: bool,
    replies: int | None = None,
    allow_relaunch: bool = False,
    allow_fallback: bool = False,
) -> list[str]:
    """What fails a run on this node; [] = passed.

    - a pile-up: more launches than the `replies` (train + evaluate, with errors) the node sent in
      the run, i.e. tasks launched again after their claim expired (None: unknown, not checked);
    - a token launched more than once;
    - fewer launches than replies (the log misses some: nothing to count on);
    - a shim that fell back to the stock flwr-clientapp, or a ClientApp that exited non-zero;
    - on a node that `took_part`: no launch log, or no launch in it.
    `allow_relaunch` / `allow_fallback`: a scenario that expects those.
    """
    out: list[str] = []
    if not launches.log:
        return [f"{name}: no ClientApp launch log could be read"] if took_part else []
    if took_part and launches.launches == 0:
        out.append(f"{name}: the launch log shows no ClientApp launch, but the node took part in the run")
    if replies is not None and launches.launches > replies and not allow_relaunch:
        out.append(
            f"{name}: ClientApp pile-up: {launches.launches} launches for the {replies} task(s) it answered: "
            "a ClientApp missed flwr's 30 s claim window and flower-superexec launched the task again "
            "(or a task never answered)"
        )
    elif replies is not None and 0 < launches.launches < replies:
        out.append(
            f"{name}: the launch log has {launches.launches} launches for {replies} answered task(s): it misses some"
        )
    relaunched = launches.relaunched
    if relaunched and not allow_relaunch:
        worst = sorted(relaunched.items(), key=lambda item: -item[1])[:3]
        out.append(
            f"{name}: {len(relaunched)} of {len(launches.tasks)} task token(s) launched more than once "
            "(" + ", ".join(f"task {task} x{n}" for task, n in worst) + ")"
        )
    fallbacks = launches.modes.get(FALLBACK, 0)
    if fallbacks and not allow_fallback:
        out.append(
            f"{name}: {fallbacks} of {launches.launches} ClientApp launch(es) fell back to the stock flwr-clientapp "
            f"(warm launcher absent or not ready): {'; '.join(sorted(set(launches.fallback_reasons)))}"
        )
    failed = {status: n for status, n in launches.exit_statuses.items() if status != "0"}
    if failed:
        out.append(
            f"{name}: ClientApp(s) exited non-zero (status: count) {failed}: e.g. a late one on an expired task token"
        )
    return out
