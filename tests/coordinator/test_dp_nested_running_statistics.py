"""Central DP refuses running statistics in its own merge, not only when ``Federated`` finds it at the top.

``Federated`` checks ``data.strategy`` before any round; a ``DPFixedClipping`` nested in a
strategy of the user's own, or called without ``Federated``, used to noise ``running_var``
all the same. Its ``aggregate`` now refuses before reading any reply.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.privacy import RunningStatistics
from fedsync.strategies import DPFixedClipping
from fedsync.strategies.base import Strategy


class Wrapper(Strategy):
    """A user's strategy that hands the merge to another (logging, scheduling, ...)."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def aggregate(self, current, results):
        return self.strategy.aggregate(current, results)


def batchnorm() -> dict[str, np.ndarray]:
    return {
        "fc.weight": np.zeros((4, 2), np.float32),
        "bn.running_mean": np.zeros(4, np.float32),
        "bn.running_var": np.ones(4, np.float32),
    }


def central() -> DPFixedClipping:
    return DPFixedClipping(noise_multiplier=1.0, clipping_norm=0.5, num_sampled_clients=2, seed=1)


def test_dp_called_directly_refuses_running_statistics_before_reading_a_reply():
    current = batchnorm()
    replies = iter([({k: v + 1 for k, v in current.items()}, 1)])
    with pytest.raises(RunningStatistics, match=r"layer 'bn' keeps running statistics of the data"):
        central().aggregate(current, replies)
    assert next(replies, None) is not None  # no reply was read
    assert np.all(current["bn.running_var"] == 1)


def test_dp_nested_in_another_strategy_is_refused_although_federated_does_not_see_it():
    data = FedArrays(batchnorm(), strategy=Wrapper(central()))
    Federated(data, ["http://127.0.0.1:9"]).close()  # the top-level check sees only Wrapper
    with pytest.raises(RunningStatistics):
        data.strategy.aggregate(data.model, iter([]))


def test_dp_without_running_statistics_still_merges():
    current = {"fc.weight": np.zeros((4, 2), np.float32)}
    merged = central().aggregate(current, iter([({"fc.weight": np.full((4, 2), 0.1, np.float32)}, 1)]))
    assert merged["fc.weight"].shape == (4, 2) and np.isfinite(merged["fc.weight"]).all()
