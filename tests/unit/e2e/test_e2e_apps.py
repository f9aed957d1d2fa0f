"""The ClientApp and ServerApp functions with Flower's message types, without a SuperLink."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, cast

import pytest

pytest.importorskip("flwr")

from e2e_app import client_app, server_app, task
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict


def context(node_config: dict[str, Any], run_config: dict[str, Any] | None = None) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config or {})


def train_message(params: list[Any]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(params), "config": ConfigRecord({"local-steps": 5})})
    # what a SuperNode hands to the ClientApp: a message with full metadata (not the public constructor)
    meta = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=1,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=3600.0,
        message_type="train",
    )
    message: Message = cast(Any, Message)(metadata=meta, content=content)
    return message


def test_partition_of_node_config() -> None:
    assert client_app.partition_of({"partition-id": 1, "num-partitions": 2}) == (1, 2)
    assert client_app.partition_of({}) == (0, 1)


def test_device_info_without_and_with_the_image_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flower_device", None)  # import fails like outside the appliance
    assert client_app.device_info() == {"device": "cpu", "framework": "numpy", "helper": "absent"}
    from supernode_runtime import flower_device

    monkeypatch.setitem(sys.modules, "flower_device", flower_device)
    info = client_app.device_info()
    assert info["helper"] == "flower_device"
    assert info["device"].startswith(("cpu", "cuda"))


def test_train_reply_has_arrays_metrics_and_client_info() -> None:
    msg = train_message(task.initial_parameters())
    reply = client_app.train(msg, context({"partition-id": 1, "num-partitions": 2}))  # the decorator returns fn
    content = reply.content
    assert len(content.array_records) == 1 and len(content.metric_records) == 1
    metrics = content.metric_records["metrics"]
    assert metrics["num-examples"] == len(task.load_partition(1, 2).y_train)
    assert float(metrics["train-loss"]) < task.mse(task.initial_parameters(), *_train_xy(1, 2))
    info = content.config_records["client-info"]
    assert info["partition_id"] == 1 and info["device"] == "cpu"


def _train_xy(p: int, n: int) -> tuple[Any, Any]:
    part = task.load_partition(p, n)
    return part.x_train, part.y_train


class FakeGrid:
    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def get_node_ids(self) -> list[int]:
        count = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return list(range(count))


def test_evaluate_reply_has_the_test_loss() -> None:
    msg = train_message(task.initial_parameters())
    reply = client_app.evaluate(msg, context({"partition-id": 0, "num-partitions": 2}))
    metrics = reply.content.metric_records["metrics"]
    part = task.load_partition(0, 2)
    assert metrics["num-examples"] == len(part.y_test)
    assert float(metrics["eval-loss"]) == pytest.approx(task.mse(task.initial_parameters(), part.x_test, part.y_test))


def test_wait_for_nodes_returns_once_enough_are_connected() -> None:
    assert server_app.wait_for_nodes(FakeGrid([0, 1, 2]), 2, timeout=5, poll=0.01) == [0, 1]


def test_wait_for_nodes_gives_up_with_a_clear_message() -> None:
    with pytest.raises(server_app.NotEnoughNodes, match="only 1 of the 2 required SuperNodes connected within"):
        server_app.wait_for_nodes(FakeGrid([1]), 2, timeout=0.05, poll=0.01)


def test_run_settings_defaults_and_overrides() -> None:
    settings = server_app.run_settings({"num-server-rounds": 5, "results-path": "/tmp/x.json"})
    assert settings["num_server_rounds"] == 5 and settings["min_nodes"] == 2
    assert settings["results_path"] == "/tmp/x.json"


def test_recorder_writes_rounds_and_status(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    recorder = server_app.Recorder(str(path), {"num_server_rounds": 1})
    assert json.loads(path.read_text())["status"] == "running"
    recorder.round(1)["eval_loss"] = 0.5
    recorder.finish("completed")
    doc = json.loads(path.read_text())
    assert doc["status"] == "completed" and doc["rounds"] == [
        {"round": 1, "started_s": doc["rounds"][0]["started_s"], "eval_loss": 0.5}
    ]
    server_app.Recorder("", {}).finish("completed")  # no path: nothing written, no error


def test_app_pyproject_is_a_valid_flower_app() -> None:
    from flwr.cli.config_utils import load_and_validate

    app_dir = Path(client_app.__file__).resolve().parents[1]
    config, _ = load_and_validate(app_dir / "pyproject.toml", check_module=False)
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "e2e_app.server_app:app",
        "clientapp": "e2e_app.client_app:app",
    }
    assert "federations" not in config["tool"]["flwr"]  # flwr 1.41 would migrate and comment it out
    assert set(config["project"]["dependencies"]) == {"flwr>=1.41.0,<2.0", "numpy>=1.26"}


def test_a_round_without_enough_replies_stops_the_run(tmp_path: Path) -> None:
    recorder = server_app.Recorder(str(tmp_path / "r.json"), {})
    strategy = server_app.RecordingFedAvg(recorder, min_nodes=2, wait_timeout=1.0)
    strategy._require_replies(1, "train", 2)
    with pytest.raises(server_app.RoundIncomplete, match="round 3 evaluate: 1 of the 2 required SuperNodes replied"):
        strategy._require_replies(3, "evaluate", 1)
