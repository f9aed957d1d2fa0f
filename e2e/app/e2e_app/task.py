"""The learning task: linear regression on synthetic data, NumPy only.

Every SuperNode generates its own partition from ``(data-seed, partition-id)``:
the same inputs always give the same data, and two partitions differ (each has
its own feature shift and size). All partitions share one true model, so
federated averaging converges towards it and the loss goes down round after
round. Nothing here imports Flower: the unit tests run it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NUM_FEATURES = 8
NOISE_STD = 0.1
Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Partition:
    partition_id: int
    num_partitions: int
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array


def true_model(seed: int) -> tuple[Array, float]:
    """The weights and bias every partition's labels are generated from."""
    rng = np.random.default_rng([seed, 2**31 - 1])
    return rng.normal(0.0, 1.0, NUM_FEATURES), float(rng.normal(0.0, 1.0))


def load_partition(partition_id: int, num_partitions: int, seed: int = 42) -> Partition:
    """Deterministic synthetic data of one partition (train and test split)."""
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    weights, bias = true_model(seed)
    rng = np.random.default_rng([seed, partition_id])
    n_train = 200 + 50 * partition_id
    n_test = 100
    shift = rng.normal(0.0, 1.0, NUM_FEATURES)  # non-IID: each partition sees its own region
    x = rng.normal(0.0, 1.0, (n_train + n_test, NUM_FEATURES)) + shift
    y = x @ weights + bias + rng.normal(0.0, NOISE_STD, n_train + n_test)
    return Partition(partition_id, num_partitions, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def initial_parameters() -> list[Array]:
    """The global model before round 1: zero weights and bias."""
    return [np.zeros(NUM_FEATURES), np.zeros(1)]


def mse(params: list[Array], x: Array, y: Array) -> float:
    weights, bias = params
    residual = x @ weights + bias[0] - y
    return float(np.mean(residual**2))


def train(params: list[Array], x: Array, y: Array, *, steps: int, learning_rate: float) -> tuple[list[Array], float]:
    """Full-batch gradient descent on the MSE; returns the new parameters and the final train loss."""
    weights = np.array(params[0], dtype=np.float64)
    bias = np.array(params[1], dtype=np.float64)
    n = len(y)
    for _ in range(steps):
        residual = x @ weights + bias[0] - y
        weights = weights - learning_rate * (2.0 / n) * (x.T @ residual)
        bias = bias - learning_rate * (2.0 / n) * np.array([residual.sum()])
    new = [weights, bias]
    return new, mse(new, x, y)


def evaluate(params: list[Array], x: Array, y: Array) -> float:
    return mse(params, x, y)


def weighted_average(values: list[tuple[float, int]]) -> float:
    """Example-weighted mean of per-node values, as FedAvg aggregates them."""
    total = sum(n for _, n in values)
    if total <= 0:
        raise ValueError("no examples to average over")
    return sum(v * n for v, n in values) / total


def fedavg(updates: list[tuple[list[Array], int]]) -> list[Array]:
    """Example-weighted average of parameter lists (what FedAvg does on the server)."""
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("no examples to average over")
    merged = [np.zeros_like(layer, dtype=np.float64) for layer in updates[0][0]]
    for params, n in updates:
        for index, layer in enumerate(params):
            merged[index] += layer * (n / total)
    return merged


def simulate(num_partitions: int, rounds: int, *, steps: int, learning_rate: float, seed: int = 42) -> list[float]:
    """Federated training without Flower (for tests): the eval loss after each round."""
    parts = [load_partition(p, num_partitions, seed) for p in range(num_partitions)]
    params = initial_parameters()
    losses = []
    for _ in range(rounds):
        updates = [
            (train(params, p.x_train, p.y_train, steps=steps, learning_rate=learning_rate)[0], len(p.y_train))
            for p in parts
        ]
        params = fedavg(updates)
        losses.append(weighted_average([(evaluate(params, p.x_test, p.y_test), len(p.y_test)) for p in parts]))
    return losses
