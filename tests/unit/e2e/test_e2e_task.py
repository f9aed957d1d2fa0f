"""The e2e app's learning task: deterministic, different partitions, loss goes down."""

from __future__ import annotations

import itertools

import pytest

np = pytest.importorskip("numpy")

from e2e_app import task  # noqa: E402


def test_partitions_are_deterministic() -> None:
    a, b = task.load_partition(1, 2, seed=7), task.load_partition(1, 2, seed=7)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_partitions_differ() -> None:
    p0, p1 = task.load_partition(0, 2), task.load_partition(1, 2)
    assert len(p0.y_train) != len(p1.y_train)
    assert not np.allclose(p0.x_train[:10], p1.x_train[:10])
    assert abs(float(p0.x_train.mean()) - float(p1.x_train.mean())) > 0.05  # non-IID feature shift


def test_seed_changes_the_data() -> None:
    assert not np.allclose(task.load_partition(0, 2, seed=1).y_train, task.load_partition(0, 2, seed=2).y_train)


@pytest.mark.parametrize(("partition_id", "num_partitions"), [(-1, 2), (2, 2), (0, 0)])
def test_bad_partition_is_refused(partition_id: int, num_partitions: int) -> None:
    with pytest.raises(ValueError):
        task.load_partition(partition_id, num_partitions)


def test_local_training_lowers_the_loss() -> None:
    p = task.load_partition(0, 2)
    params = task.initial_parameters()
    before = task.mse(params, p.x_train, p.y_train)
    new, after = task.train(params, p.x_train, p.y_train, steps=10, learning_rate=0.05)
    assert after < before
    assert after == pytest.approx(task.mse(new, p.x_train, p.y_train))
    assert [a.shape for a in new] == [a.shape for a in params]
    np.testing.assert_array_equal(params[0], np.zeros(task.NUM_FEATURES))  # input not modified


def test_federated_loss_decreases_every_round() -> None:
    losses = task.simulate(2, 4, steps=10, learning_rate=0.05)
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 0.1 * losses[0]


def test_fedavg_weights_by_examples() -> None:
    merged = task.fedavg([([np.array([0.0]), np.array([0.0])], 1), ([np.array([3.0]), np.array([6.0])], 2)])
    np.testing.assert_allclose(merged[0], [2.0])
    np.testing.assert_allclose(merged[1], [4.0])
    assert task.weighted_average([(1.0, 1), (4.0, 3)]) == pytest.approx(3.25)
    with pytest.raises(ValueError):
        task.weighted_average([])
