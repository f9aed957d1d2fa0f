"""ServerApp: FedAvg over the connected SuperNodes, with a results file.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, overridable with
``flwr run --run-config``):

- ``num-server-rounds``: rounds of train + evaluate;
- ``min-nodes``: nodes that must take part in every round (the run waits up to
  ``wait-nodes-timeout`` seconds for them, then fails with a clear message
  instead of waiting for ever as FedAvg's own sampling does);
- ``round-timeout``: seconds to wait for the replies of one round;
- ``local-steps``, ``learning-rate``, ``data-seed``: the task;
- ``results-path``: where to write the results JSON (empty: none). The
  ServerApp runs next to the SuperLink, so this is a path on the SuperLink's
  host. The file is rewritten after every round, so even a failed run leaves
  what it got. Each round carries its timestamps in seconds since the
  ServerApp started: ``started_s`` (train messages about to be sent),
  ``train_done_s`` (train replies in), ``eval_started_s``, ``eval_done_s``,
  and ``round_s`` (``eval_done_s - started_s``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from . import task

LOG = logging.getLogger("flwr")
RESULTS_SCHEMA = 1
app = ServerApp()


class NotEnoughNodes(RuntimeError):
    """Fewer SuperNodes than ``min-nodes`` connected within the timeout."""


class RoundIncomplete(RuntimeError):
    """Fewer than ``min-nodes`` replies in a round: the run stops instead of going on without them."""


def wait_for_nodes(grid: Grid, count: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Connected node ids once at least `count` are connected; NotEnoughNodes after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() >= deadline:
            raise NotEnoughNodes(
                f"only {len(nodes)} of the {count} required SuperNodes connected within {timeout:.0f} s"
            )
        LOG.info("e2e-app: waiting for nodes: %d connected, %d required", len(nodes), count)
        time.sleep(poll)


class Recorder:
    """Per-round results, written to a JSON file after every change."""

    def __init__(self, path: str, settings: dict[str, Any]) -> None:
        self.path = Path(path) if path else None
        self.started = time.time()
        self.doc: dict[str, Any] = {
            "schema": RESULTS_SCHEMA,
            "status": "running",
            "error": None,
            "settings": settings,
            "rounds": [],
            "started_at": self.started,
        }
        self.write()

    def round(self, number: int) -> dict[str, Any]:
        rounds: list[dict[str, Any]] = self.doc["rounds"]
        for entry in rounds:
            if entry["round"] == number:
                return entry
        entry = {"round": number, "started_s": self.elapsed()}
        rounds.append(entry)
        return entry

    def elapsed(self) -> float:
        """Seconds since the ServerApp started (the round timestamps of the results file)."""
        return round(time.time() - self.started, 3)

    def mark(self, number: int, key: str) -> dict[str, Any]:
        """Stamp `key` (seconds since start) on round `number`; with eval_done_s also its round_s."""
        entry = self.round(number)
        entry[key] = self.elapsed()
        if key == "eval_done_s":
            entry["round_s"] = round(entry[key] - entry["started_s"], 3)
        return entry

    def finish(self, status: str, error: str | None = None, **extra: Any) -> None:
        self.doc.update(status=status, error=error, duration_s=round(time.time() - self.started, 3), **extra)
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        os.replace(tmp, self.path)


def metric(metrics: MetricRecord | None, key: str) -> float | None:
    """One aggregated metric as a float (None when missing)."""
    if metrics is None or key not in metrics:
        return None
    value: Any = metrics[key]
    return float(value)


def _client_infos(replies: list[Message]) -> list[dict[str, Any]]:
    infos = []
    for msg in replies:
        entry: dict[str, Any] = {"node_id": msg.metadata.src_node_id}
        if msg.has_error():
            entry["error"] = str(msg.error.reason)
        else:
            if "client-info" in msg.content:
                entry.update(dict(msg.content["client-info"]))
            if "metrics" in msg.content.metric_records:
                entry.update(dict(msg.content.metric_records["metrics"]))
        infos.append(entry)
    return sorted(infos, key=lambda e: (e.get("partition_id", -1), e["node_id"]))


class RecordingFedAvg(FedAvg):
    """FedAvg that waits for its nodes with a timeout and records every round."""

    def __init__(self, recorder: Recorder, min_nodes: int, wait_timeout: float) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.recorder = recorder
        self.min_nodes = min_nodes
        self.wait_timeout = wait_timeout

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.recorder.round(server_round)
        wait_for_nodes(grid, self.min_nodes, self.wait_timeout)
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.recorder.mark(server_round, "eval_started_s")
        wait_for_nodes(grid, self.min_nodes, self.wait_timeout)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        entry = self.recorder.mark(server_round, "train_done_s")  # the replies are in (or the round timed out)
        arrays, metrics = super().aggregate_train(server_round, replies)
        entry["train_nodes"] = sum(1 for m in replies if not m.has_error())
        entry["train_failures"] = sum(1 for m in replies if m.has_error())
        entry["train_loss"] = metric(metrics, "train-loss")
        entry["train_clients"] = _client_infos(replies)
        self.recorder.write()
        LOG.info(
            "e2e-app: round %d train loss %s from %d node(s)", server_round, entry["train_loss"], entry["train_nodes"]
        )
        self._require_replies(server_round, "train", entry["train_nodes"])
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        entry = self.recorder.mark(server_round, "eval_done_s")
        metrics = super().aggregate_evaluate(server_round, replies)
        entry["eval_nodes"] = sum(1 for m in replies if not m.has_error())
        entry["eval_failures"] = sum(1 for m in replies if m.has_error())
        entry["eval_loss"] = metric(metrics, "eval-loss")
        entry["eval_clients"] = _client_infos(replies)
        self.recorder.write()
        LOG.info(
            "e2e-app: round %d eval loss %s from %d node(s)", server_round, entry["eval_loss"], entry["eval_nodes"]
        )
        self._require_replies(server_round, "evaluate", entry["eval_nodes"])
        return metrics

    def _require_replies(self, server_round: int, phase: str, replies: int) -> None:
        if replies < self.min_nodes:
            raise RoundIncomplete(
                f"round {server_round} {phase}: {replies} of the {self.min_nodes} required SuperNodes replied "
                f"within the round timeout; stopping the run"
            )


def run_settings(run_config: Any) -> dict[str, Any]:
    return {
        "num_server_rounds": int(run_config.get("num-server-rounds", 3)),
        "min_nodes": int(run_config.get("min-nodes", 2)),
        "wait_nodes_timeout": float(run_config.get("wait-nodes-timeout", 300.0)),
        "round_timeout": float(run_config.get("round-timeout", 600.0)),
        "local_steps": int(run_config.get("local-steps", 10)),
        "learning_rate": float(run_config.get("learning-rate", 0.05)),
        "data_seed": int(run_config.get("data-seed", 42)),
        "results_path": str(run_config.get("results-path", "")),
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = run_settings(context.run_config)
    recorder = Recorder(settings["results_path"], settings)
    recorder.doc["run_id"] = grid.run.run_id
    try:
        nodes = wait_for_nodes(grid, settings["min_nodes"], settings["wait_nodes_timeout"])
        recorder.doc["nodes_at_start"] = nodes
        LOG.info("e2e-app: %d node(s) connected, starting %d rounds", len(nodes), settings["num_server_rounds"])
        strategy = RecordingFedAvg(recorder, settings["min_nodes"], settings["wait_nodes_timeout"])
        train_config = ConfigRecord(
            {"local-steps": settings["local_steps"], "learning-rate": settings["learning_rate"]}
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(task.initial_parameters()),
            num_rounds=settings["num_server_rounds"],
            timeout=settings["round_timeout"],
            train_config=train_config,
        )
    except BaseException as exc:
        recorder.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    final = result.arrays.to_numpy_ndarrays()
    weights, bias = task.true_model(settings["data_seed"])
    recorder.finish(
        "completed",
        final_weight_error=float(abs(final[0] - weights).max()) if final else None,
        final_bias_error=float(abs(final[1][0] - bias)) if final else None,
    )
    LOG.info("e2e-app: finished %d rounds", settings["num_server_rounds"])
