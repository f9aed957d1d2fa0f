"""The warm ClientApp launcher in a real local deployment, with ClientApp start-up slowed down.

A real SuperLink, two real flower-supernodes (subprocess isolation) started through the container's
entrypoint (:mod:`warm_launcher_deploy`), ``flwr run`` of the e2e app. Every *real*
``flwr-clientapp`` sleeps DELAY_S before importing flwr: longer than the 30 s for which
flower-superexec's claim of a task lives (``HEARTBEAT_DEFAULT_INTERVAL``, flwr/common/constant.py),
as on a slow host. The launcher's children never pay it: they are forked from a process that has
flwr imported already.

- stock (``FL_WARM_CLIENTAPP=NO``): no round completes; the first task is launched again after
  its claim expired (the pile-up of the appliance e2e under TCG);
- warm (default): every round completes, each task is launched exactly once, through the
  launcher (no fallback), and the real program never starts.
"""

from __future__ import annotations

from pathlib import Path

from warm_launcher_deploy import NODES, deploy

DELAY_S = 35.0
ROUNDS = 3
TASKS_PER_ROUND = 2  # train and evaluate: one ClientApp process each, per node


def test_stock_flwr_makes_no_progress_when_clientapps_start_slowly(tmp_path: Path) -> None:
    outcome = deploy(tmp_path / "stock", warm=False, delay=DELAY_S, rounds=1, round_timeout=45.0, run_timeout=120.0)
    real = outcome.launches.per_node("real-start")
    assert outcome.completed_rounds == 0, outcome.logs()
    assert not outcome.status.endswith("completed"), outcome.status
    assert len(real) == NODES, outcome.logs()
    # one train task per node, launched again and again as its claim expires (> 1 launch per task)
    assert all(count >= 2 for count in real.values()), real
    assert not outcome.launches.of("shim")  # the launcher was off


def test_the_warm_launcher_completes_every_round_with_one_launch_per_task(tmp_path: Path) -> None:
    outcome = deploy(tmp_path / "warm", warm=True, delay=DELAY_S, rounds=ROUNDS, round_timeout=70.0, run_timeout=150.0)
    assert outcome.status == "finished:completed", f"{outcome.problems}\n{outcome.logs()}"
    assert outcome.completed_rounds == ROUNDS
    losses = [r["eval_loss"] for r in (outcome.results or {})["rounds"]]
    assert losses == sorted(losses, reverse=True), losses
    launches = outcome.launches
    assert len(launches.of("ready")) == NODES  # one launcher per node, started once
    warm = launches.per_node("shim", mode="warm")
    assert sorted(warm.values()) == [ROUNDS * TASKS_PER_ROUND] * NODES, warm
    assert not launches.of("shim", mode="fallback") and not launches.of("real-start")
    tasks = [e["task"] for e in launches.of("shim")]
    assert len(tasks) == len(set(tasks))  # each task (token) launched once
    assert [e["status"] for e in launches.of("shim-exit")] == [0] * NODES * ROUNDS * TASKS_PER_ROUND
