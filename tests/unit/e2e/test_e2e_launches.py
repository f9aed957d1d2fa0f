"""ClientApp launch counting and pile-up detection, fed launch-log JSON lines as the warm launcher writes them."""

from __future__ import annotations

import json
from typing import Any

from e2e import launches as ln
from e2e import summary as sm

SUPEREXEC = 4242


def line(event: str, **fields: Any) -> str:
    return json.dumps({"event": event, "t": 1000.0, "pid": 7, **fields})


def shim(task: str, mode: str = "warm", **fields: Any) -> str:
    return line("shim", mode=mode, task=task, parent_pid=SUPEREXEC, **fields)


def log(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def warm_task(task: str, *, launch_s: float = 0.05, task_s: float = 1.5, status: int = 0) -> list[str]:
    """The events of one task launched once, the warm way."""
    start = {"event": "start", "t": 999.0 + launch_s, "pid": 99, "shim_started": 999.0, "task": task}
    return [
        shim(task, started=999.0),
        line("fork", child=99, task=task, shim_pid=8),
        json.dumps(start),
        line("exit", child=99, task=task, status=status, seconds=task_s),
        line("shim-exit", status=status, task=task, parent_pid=SUPEREXEC),
    ]


def counted(text: str) -> ln.NodeLaunches:
    events, bad = ln.parse_events(text)
    return ln.count(events, bad_lines=bad)


def test_one_launch_per_task_passes() -> None:
    text = log(
        line("ready", import_seconds=0.5, modules=1135), *warm_task("aaa"), *warm_task("bbb", launch_s=0.2, task_s=3.0)
    )
    result = counted(text)
    assert result.launches == 2 and result.tasks == {"aaa": 1, "bbb": 1} and result.max_per_task == 1
    assert result.modes == {"warm": 2} and result.superexec_pids == [SUPEREXEC]
    assert result.exit_statuses == {"0": 2} and result.launcher_starts == 1
    assert result.launch_s_max == 0.2 and result.task_s_max == 3.0
    assert ln.problems("node-0", result, took_part=True, replies=2) == []
    doc = result.as_dict()
    assert doc["task_count"] == 2 and doc["max_per_task"] == 1 and doc["log"] is True


def test_more_launches_than_answered_tasks_is_a_pile_up() -> None:
    """flwr mints a new token per claim: a task launched again after its claim expired has a new digest,
    so the pile-up shows as more launches than the node's replies."""
    text = log(*warm_task("aaa"), *warm_task("bbb"), *warm_task("ccc"))
    result = counted(text)
    assert result.max_per_task == 1  # every token once: the digests alone cannot see it
    (problem,) = ln.problems("node-1", result, took_part=True, replies=2)
    assert problem.startswith("node-1: ClientApp pile-up: 3 launches for the 2 task(s) it answered")
    assert "30 s claim window" in problem
    assert ln.problems("node-1", result, took_part=True, replies=2, allow_relaunch=True) == []
    assert ln.problems("node-1", result, took_part=True, replies=None) == []  # no results file: not checked


def test_fewer_launches_than_answered_tasks_means_an_incomplete_log() -> None:
    (problem,) = ln.problems("node-0", counted(log(*warm_task("aaa"))), took_part=True, replies=6)
    assert "1 launches for 6 answered task(s): it misses some" in problem


def test_one_token_launched_twice_fails() -> None:
    text = log(
        shim("bbb"),
        shim("bbb", mode="fallback", reason="the launcher accepted the task but no child started"),
        shim("bbb"),
        shim("ccc"),
        shim("ccc"),
    )
    result = counted(text)
    assert result.tasks == {"bbb": 3, "ccc": 2} and result.relaunched == {"bbb": 3, "ccc": 2}
    problems = ln.problems("node-1", result, took_part=True, replies=2, allow_fallback=True)
    assert len(problems) == 2 and problems[0].startswith("node-1: ClientApp pile-up: 5 launches for the 2")
    assert problems[1] == "node-1: 2 of 2 task token(s) launched more than once (task bbb x3, task ccc x2)"
    assert ln.problems("node-1", result, took_part=True, replies=2, allow_relaunch=True, allow_fallback=True) == []


def test_a_fallback_fails_unless_expected() -> None:
    text = log(shim("aaa", mode="fallback", reason="FileNotFoundError: no socket"), *warm_task("bbb"))
    result = counted(text)
    assert result.modes == {"fallback": 1, "warm": 1} and result.max_per_task == 1
    (problem,) = ln.problems("node-0", result, took_part=True, replies=2)
    assert "1 of 2 ClientApp launch(es) fell back" in problem and "FileNotFoundError: no socket" in problem
    assert ln.problems("node-0", result, took_part=True, replies=2, allow_fallback=True) == []


def test_the_tcg_failure_is_a_pile_up_of_fallbacks_with_late_clientapps_failing() -> None:
    """The launcher is not ready, the shims fall back, the slow stock start misses the claim, the task is
    claimed again (new token), and the late ClientApp exits with an error on its expired token."""
    text = log(
        shim("aaa", mode="fallback", reason="x"),
        shim("bbb", mode="fallback", reason="x"),
        line("shim-exit", status=1, task="aaa"),
    )
    problems = ln.problems("node-0", counted(text), took_part=True, replies=1)
    assert len(problems) == 3
    assert "pile-up: 2 launches for the 1" in problems[0] and "fell back" in problems[1]
    assert problems[2].startswith("node-0: ClientApp(s) exited non-zero (status: count) {'1': 1}")


def test_no_log_or_no_launch_fails_only_a_node_that_took_part() -> None:
    missing = ln.NodeLaunches(log=False)
    assert ln.problems("node-0", missing, took_part=True) == ["node-0: no ClientApp launch log could be read"]
    assert ln.problems("node-1", missing, took_part=False) == []
    idle = counted(log(line("ready", import_seconds=0.4)))
    assert idle.launches == 0 and idle.max_per_task == 0
    assert "shows no ClientApp launch" in ln.problems("node-0", idle, took_part=True)[0]
    assert ln.problems("node-1", idle, took_part=False) == []  # e.g. the wrong-CA node


def test_a_line_that_is_not_an_event_is_counted_not_fatal() -> None:
    text = log(*warm_task("aaa"), '{"event": "shim", "mo', "[1, 2]", "")
    events, bad = ln.parse_events(text)
    assert bad == 2 and len(events) == 5
    assert counted(text).bad_lines == 2


def test_a_shim_without_a_parsed_task_is_grouped_apart() -> None:
    text = log(
        line(
            "shim", mode="fallback", reason="command line is not the SubprocessExecutor form", task="", parent_pid=None
        )
    )
    result = counted(text)
    assert result.tasks == {ln.NO_TASK: 1} and result.superexec_pids == []


def test_events_of_a_run_and_a_restarted_container() -> None:
    events, _ = ln.parse_events(log(line("ready"), *warm_task("aaa"), *warm_task("bbb")))
    before = 6  # ready + the first task's events: what the log held when the run started
    assert [e.get("task") for e in ln.since(events, before) if e["event"] == "shim"] == ["bbb"]
    fresh = events[:2]  # a new container: its log is shorter than the offset, so all of it is new
    assert ln.since(fresh, before) == fresh


def test_launcher_ready_is_the_last_ready_event() -> None:
    events, _ = ln.parse_events(log(line("ready", import_seconds=1.0), shim("aaa"), line("ready", import_seconds=2.0)))
    ready = ln.launcher_ready(events)
    assert ready is not None and ready["import_seconds"] == 2.0
    assert ln.launcher_ready(ln.parse_events(log(shim("aaa")))[0]) is None


def test_replies_per_partition_count_the_tasks_each_node_ran() -> None:
    ok0, ok1 = {"node_id": 10, "partition_id": 0}, {"node_id": 11, "partition_id": 1}
    doc = {
        "rounds": [
            {"round": 1, "train_clients": [ok0, ok1], "eval_clients": [ok0, {"node_id": 11, "error": "timeout"}]},
            {"round": 2, "train_clients": [ok0]},
        ]
    }
    assert sm.replies_per_partition(doc) == {0: 3, 1: 2}
    assert sm.replies_per_partition({"rounds": []}) == {}
    assert sm.replies_per_partition(None) is None


def test_launch_counts_and_round_times_in_the_summary(tmp_path: Any) -> None:
    run = sm.RunReport(7, "finished:completed", 30.0, "results.json")
    run.launches = {
        "node-0": {**counted(log(*warm_task("aaa"), shim("bbb"), shim("bbb"))).as_dict(), "replies": 2},
        "node-1": {**ln.NodeLaunches(log=False).as_dict(), "replies": None},
    }
    run.rounds = sm.round_table(
        {
            "rounds": [
                {
                    "round": 1,
                    "started_s": 0.5,
                    "train_done_s": 40.5,
                    "eval_started_s": 40.6,
                    "eval_done_s": 60.5,
                    "round_s": 60.0,
                },
                {"round": 2, "started_s": 60.6},
            ],
            "duration_s": 70.6,
        }
    )
    assert [(r["round_s"], r["train_s"], r["eval_s"]) for r in run.rounds] == [(60.0, 40.0, 19.9), (10.0, None, None)]
    report = sm.ScenarioReport("baseline", "d", runs=[run])
    summary = sm.Summary("img", "vm", 2, False, "now", scenarios=[report])
    json_path, md_path = sm.write(summary, tmp_path)
    doc = json.loads(json_path.read_text())
    assert doc["scenarios"][0]["runs"][0]["launches"]["node-0"]["tasks"] == {"aaa": 1, "bbb": 2}
    assert doc["scenarios"][0]["runs"][0]["rounds"][0]["round_s"] == 60.0
    md = md_path.read_text()
    assert "| node-0 | 3 | 2 | 2 | 2 | 3 / 0 | [4242] | 0: 1 | 0.1 s | 1.5 s |" in md
    assert "| node-1 | no launch log | - |" in md
    assert "| 60.0 s | 40.0 s | 19.9 s |" in md
