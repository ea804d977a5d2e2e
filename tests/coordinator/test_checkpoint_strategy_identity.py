"""A checkpoint records a strategy's full identity: a wrapped strategy cannot hide from the resume check.

``DPFixedClipping(FedAdam())`` resumed as ``DPFixedClipping(FedYogi())`` loaded FedAdam's moments
into FedYogi (the check compared only the outer class name); unwrapped, the same resume was
refused. Every wrapper (the DP ones, and any strategy holding another) now names what it wraps.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator import checkpoint as checkpoint_io
from fedsync.coordinator.history import History, RoundResult
from fedsync.errors import CheckpointError
from fedsync.strategies import DPAdaptiveClipping, DPFixedClipping, FedAdam, FedAvg, FedYogi, Strategy


def dp(inner, kind=DPFixedClipping):
    norm = {"clipping_norm": 10.0} if kind is DPFixedClipping else {"initial_clipping_norm": 10.0}
    return kind(inner, noise_multiplier=0.0, num_sampled_clients=1, seed=0, **norm)


class Holding(Strategy):
    """A third party's wrapper: holds another strategy and delegates to it."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def aggregate(self, current, results):
        return self.inner.aggregate(current, results)

    def state(self):
        return self.inner.state()

    def check_state(self, state, layout):
        self.inner.check_state(state, layout)

    def load_state(self, state, layout):
        self.inner.load_state(state, layout)


def one_round(strategy) -> FedArrays:
    data = FedArrays({"w": np.zeros(4, np.float32)}, strategy=strategy)
    sender = FedArrays({"w": np.ones(4, np.float32)})
    sender.samples = 2
    data.merge([bytes(sender.serialize(1))], 1)
    return data


def history() -> History:
    h = History()
    h.append(RoundResult(repetition=1))
    return h


@pytest.mark.parametrize(
    ("saved", "resumed", "names"),
    [
        (lambda: dp(FedAdam()), lambda: dp(FedYogi()), ("DPFixedClipping(FedAdam)", "DPFixedClipping(FedYogi)")),
        (
            lambda: dp(FedAdam(), DPAdaptiveClipping),
            lambda: dp(FedYogi(), DPAdaptiveClipping),
            ("DPAdaptiveClipping(FedAdam)", "DPAdaptiveClipping(FedYogi)"),
        ),
        (lambda: dp(FedAdam()), lambda: FedAdam(), ("DPFixedClipping(FedAdam)", "FedAdam")),
        (lambda: Holding(FedAdam()), lambda: Holding(FedYogi()), ("Holding(FedAdam)", "Holding(FedYogi)")),
        (lambda: Holding(dp(FedAdam())), lambda: Holding(dp(FedYogi())), ("Holding(DPFixedClipping(FedAdam))", "")),
    ],
)
def test_a_resume_under_another_wrapped_strategy_is_refused_and_changes_nothing(tmp_path, saved, resumed, names):
    checkpoint_io.save(tmp_path, one_round(saved()), 1, history())
    data = FedArrays({"w": np.zeros(4, np.float32)}, strategy=resumed())
    with pytest.raises(
        CheckpointError, match=f"holds the state of strategy '{re.escape(names[0])}'.*{re.escape(names[1])}"
    ) as refused:
        checkpoint_io.load(tmp_path, data)
    assert "use the same strategy" in str(refused.value)
    assert np.all(data.model["w"] == 0) and not any(np.any(a) for a in data.strategy.state().values() if a.ndim)


def test_the_same_wrapped_strategy_resumes_with_its_state(tmp_path):
    first = one_round(dp(FedAdam()))
    checkpoint_io.save(tmp_path, first, 1, history())
    resumed = FedArrays({"w": np.zeros(4, np.float32)}, strategy=dp(FedAdam()))
    assert checkpoint_io.load(tmp_path, resumed)[0] == 1
    for name, value in first.strategy.state().items():
        np.testing.assert_array_equal(resumed.strategy.state()[name], value)


def test_identity_names_every_strategy_held():
    assert FedAvg().identity() == "FedAvg"
    assert dp(FedYogi()).identity() == "DPFixedClipping(FedYogi)"
    assert Holding(dp(FedAdam(), DPAdaptiveClipping)).identity() == "Holding(DPAdaptiveClipping(FedAdam))"
