"""Pass/fail rules on a run's results file, and the summary files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from e2e import summary as sm


def client(partition: int, helper: str = "flower_device", **extra: Any) -> dict[str, Any]:
    return {"node_id": 100 + partition, "partition_id": partition, "device": "cpu", "helper": helper, **extra}


def results(losses: list[float], partitions: tuple[int, ...] = (0, 1), status: str = "completed") -> dict[str, Any]:
    rounds = []
    for number, loss in enumerate(losses, start=1):
        clients = [client(p) for p in partitions]
        rounds.append(
            {
                "round": number,
                "train_loss": loss * 0.9,
                "eval_loss": loss,
                "train_nodes": len(clients),
                "eval_nodes": len(clients),
                "train_failures": 0,
                "eval_failures": 0,
                "train_clients": clients,
                "eval_clients": copy.deepcopy(clients),
            }
        )
    return {"schema": 1, "status": status, "error": None, "rounds": rounds}


def check(
    doc: dict[str, Any] | None,
    rounds: int = 3,
    partitions: tuple[int, ...] = (0, 1),
    helper: str | None = "flower_device",
) -> list[str]:
    return sm.check_results(doc, expected_rounds=rounds, expected_partitions=partitions, expected_helper=helper)


def test_good_run_passes() -> None:
    assert check(results([1.4, 0.2, 0.06])) == []


def test_non_decreasing_loss_fails() -> None:
    problems = check(results([1.4, 1.4, 0.06]))
    assert any("eval loss did not go down in round 2" in p for p in problems)
    assert any("increase" in p or "did not go down" in p for p in check(results([1.4, 0.2, 0.3])))


def test_missing_node_fails() -> None:
    doc = results([1.4, 0.2, 0.06])
    doc["rounds"][1]["train_clients"].pop()
    problems = check(doc)
    assert problems == ["round 2 train: replies from partitions [0], expected [0, 1]"]


def test_failed_reply_counts_as_missing() -> None:
    doc = results([1.4, 0.2, 0.06])
    doc["rounds"][2]["eval_clients"][1] = {"node_id": 101, "error": "ClientApp crashed"}
    doc["rounds"][2]["eval_failures"] = 1
    problems = check(doc)
    assert "round 3 eval: replies from partitions [0], expected [0, 1]" in problems
    assert any("1 node(s) failed: ClientApp crashed" in p for p in problems)


def test_extra_node_fails() -> None:
    assert check(results([1.4, 0.2, 0.06], partitions=(0, 1, 1)))  # a duplicate partition is not "both nodes"


def test_missing_round_and_status() -> None:
    doc = results([1.4, 0.2], status="failed")
    doc["error"] = "NotEnoughNodes: only 1 of the 2 required SuperNodes connected within 60 s"
    problems = check(doc)
    assert problems[0].startswith("ServerApp status 'failed': NotEnoughNodes")
    assert "rounds [1, 2] ran, expected 1..3" in problems


def test_no_results_file() -> None:
    assert check(None) == ["no results file: the ServerApp did not start or could not write it"]


def test_helper_check() -> None:
    doc = results([1.4, 0.2, 0.06])
    doc["rounds"][0]["train_clients"][0]["helper"] = "absent"
    assert any("without the flower_device helper" in p for p in check(doc))
    assert check(doc, helper=None) == []


def test_single_node_run() -> None:
    assert check(results([1.2, 0.2, 0.04], partitions=(0,)), partitions=(0,)) == []


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        ([3.0, 2.0, 1.0], True),
        ([1.0, 1.0], False),
        ([1.0, 2.0], False),
        ([1.0], False),
        ([1.0, None], False),
        ([2.0, float("nan")], False),
    ],
)
def test_check_decreasing(values: list[float | None], ok: bool) -> None:
    assert (sm.check_decreasing(values, "loss") == []) is ok


def test_round_table() -> None:
    table = sm.round_table(results([1.4, 0.2]))
    assert table[0]["partitions"] == [0, 1] and table[0]["devices"] == ["cpu (flower_device)"]
    assert [r["eval_loss"] for r in table] == [1.4, 0.2]
    assert sm.round_table(None) == []


SUPERLINK_LOG = """\
INFO :      Starting Flower SuperLink
2026-11-22T06:59:49.706Z INFO [uvicorn.access] 127.0.0.1:49230 - "POST /v1/fleet/register-node HTTP/1.1" 200
2026-11-22T06:59:49.798Z INFO [uvicorn.access] 127.0.0.1:49230 - "POST /v1/fleet/activate-node HTTP/1.1" 200
2026-11-22T06:59:51.000Z INFO [uvicorn.access] 127.0.0.1:49231 - "POST /v1/fleet/activate-node HTTP/1.1" 401
2026-11-22T06:59:52.500Z INFO [uvicorn.access] 127.0.0.1:49232 - "POST /v1/fleet/activate-node HTTP/1.1" 200
"""


def test_node_activations_and_connect_times() -> None:
    times = sm.node_activations(SUPERLINK_LOG)
    assert len(times) == 2 and times[1] - times[0] == pytest.approx(2.702)
    first, both = sm.connect_times(times, times[0] - 10.0, 2)
    assert (first, both) == (10.0, 12.7)
    assert sm.connect_times(times, times[1] + 1, 1) == (None, None)
    assert sm.connect_times(times, times[0] - 1, 3) == (1.0, None)


def test_summary_files(tmp_path: Path) -> None:
    summary = sm.Summary(image="supernode-cpu", nodes_mode="vm", rounds=3, faults=False, started_at="now")
    scenario = sm.ScenarioReport("baseline", "two nodes", timings={"first_node_s": 80.0, "total_s": 300.0})
    scenario.nodes = {"node-0": {"partition_id": 0, "tls": "good", "ssh_s": 70.0, "ready_s": 120.0}}
    run = sm.RunReport(5, "finished:completed", 90.0, "r.json", rounds=sm.round_table(results([1.4, 0.2, 0.06])))
    scenario.runs.append(run)
    scenario.finish()
    summary.scenarios.append(scenario)
    summary.finish(301.0)
    assert summary.ok
    json_path, md_path = sm.write(summary, tmp_path)
    doc = json.loads(json_path.read_text())
    assert doc["ok"] is True and doc["scenarios"][0]["runs"][0]["rounds"][2]["eval_loss"] == 0.06
    text = md_path.read_text()
    assert "PASSED" in text and "| 3 | 0.054000 | 0.060000 | 2/2 | [0, 1] | cpu (flower_device) |" in text
    assert "| node-0 | 0 | good | 70.0 s | 120.0 s |" in text


def test_a_run_problem_fails_the_scenario_and_the_summary() -> None:
    scenario = sm.ScenarioReport("baseline", "x")
    scenario.runs.append(sm.RunReport(1, "finished:failed", 1.0, "r.json", problems=["boom"]))
    scenario.finish()
    summary = sm.Summary(image="i", nodes_mode="vm", rounds=3, faults=False, started_at="now", scenarios=[scenario])
    summary.finish(1.0)
    assert not scenario.ok and not summary.ok
    assert "- problem: boom" in sm.render_markdown(summary)
    empty = sm.Summary(image="i", nodes_mode="vm", rounds=3, faults=False, started_at="now")
    empty.finish(0.0)
    assert not empty.ok
