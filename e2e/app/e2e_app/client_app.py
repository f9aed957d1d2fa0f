"""ClientApp: trains the linear model on this SuperNode's synthetic partition.

Inside the appliance it runs in the SuperNode container (subprocess isolation),
where the image ships the device helper as the top-level module
``flower_device``; elsewhere (local simulation, a SuperNode on a laptop) the
helper is missing and the app says so and runs on CPU.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import task

LOG = logging.getLogger("flwr")
app = ClientApp()


def device_info() -> dict[str, str]:
    """Which device this node trains on, as the image's device helper reports it."""
    try:
        import flower_device  # shipped in the SuperNode image as a top-level module
    except ImportError:
        return {"device": "cpu", "framework": "numpy", "helper": "absent"}
    described = flower_device.describe()
    device = flower_device.get_device()
    return {"device": str(device), "framework": str(described.get("framework", "none")), "helper": "flower_device"}


def partition_of(node_config: Any) -> tuple[int, int]:
    """``partition-id`` and ``num-partitions`` from the node config (0 of 1 when unset)."""
    partition_id = int(node_config.get("partition-id", 0))
    num_partitions = int(node_config.get("num-partitions", 1))
    return partition_id, num_partitions


def _setting(msg: Message, context: Context, key: str, default: float) -> float:
    """A number from the message's config record, else the run config, else `default`."""
    records = msg.content.config_records
    value: Any = records["config"].get(key) if "config" in records else None
    if value is None:
        value = context.run_config.get(key, default)
    return float(value)


def _settings(msg: Message, context: Context) -> tuple[int, float, int]:
    steps = int(_setting(msg, context, "local-steps", 10))
    learning_rate = _setting(msg, context, "learning-rate", 0.05)
    seed = int(_setting(msg, context, "data-seed", 42))
    return steps, learning_rate, seed


def _client_info(partition_id: int, num_partitions: int) -> ConfigRecord:
    info: dict[str, Any] = dict(device_info())
    info.update(partition_id=partition_id, num_partitions=num_partitions, hostname=socket.gethostname())
    return ConfigRecord(info)


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition_id, num_partitions = partition_of(context.node_config)
    steps, learning_rate, seed = _settings(msg, context)
    info = _client_info(partition_id, num_partitions)
    data = task.load_partition(partition_id, num_partitions, seed)
    params = msg.content.array_records["arrays"].to_numpy_ndarrays()
    LOG.info(
        "e2e-app: training partition %d/%d on %s (helper %s, framework %s), %d steps, lr %s",
        partition_id,
        num_partitions,
        info["device"],
        info["helper"],
        info["framework"],
        steps,
        learning_rate,
    )
    new_params, loss = task.train(params, data.x_train, data.y_train, steps=steps, learning_rate=learning_rate)
    LOG.info("e2e-app: partition %d train loss %.6f", partition_id, loss)
    content = RecordDict(
        {
            "arrays": ArrayRecord(new_params),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": len(data.y_train)}),
            "client-info": info,
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    partition_id, num_partitions = partition_of(context.node_config)
    _, _, seed = _settings(msg, context)
    data = task.load_partition(partition_id, num_partitions, seed)
    params = msg.content.array_records["arrays"].to_numpy_ndarrays()
    loss = task.evaluate(params, data.x_test, data.y_test)
    LOG.info("e2e-app: partition %d eval loss %.6f", partition_id, loss)
    content = RecordDict(
        {
            "metrics": MetricRecord({"eval-loss": loss, "num-examples": len(data.y_test)}),
            "client-info": _client_info(partition_id, num_partitions),
        }
    )
    return Message(content=content, reply_to=msg)
