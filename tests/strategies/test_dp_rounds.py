"""Central DP's noise is drawn per round from the seed and the round's number, which the checkpoint keeps (#23):
a run resumed from its strategy state draws what the uninterrupted run drew, and a checkpoint's round count is
checked before use.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync.strategies import DPAdaptiveClipping, DPFixedClipping

pytest.importorskip("dp_accounting")

LAYOUT = {"w": ((4,), np.dtype(np.float32))}


def replies(round_number):
    rng = np.random.default_rng(round_number)
    return [({"w": rng.normal(size=4).astype(np.float32)}, n) for n in (3, 5)]


@pytest.mark.parametrize(
    "make",
    [
        lambda: DPFixedClipping(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2, seed=7),
        lambda: DPAdaptiveClipping(noise_multiplier=1.0, num_sampled_clients=2, clipped_count_stddev=1.0, seed=7),
    ],
)
def test_a_resumed_strategy_draws_the_noise_the_uninterrupted_one_drew(make):
    current = {"w": np.zeros(4, np.float32)}
    whole = make()
    rounds = [whole.aggregate(current, replies(r)) for r in range(3)]
    cut = make()
    cut.aggregate(current, replies(0))
    saved = {k: v.copy() for k, v in cut.state().items()}
    resumed = make()
    resumed.load_state(saved, LAYOUT)
    again = [resumed.aggregate(current, replies(r)) for r in (1, 2)]
    for a, b in zip(rounds[1:], again, strict=True):
        assert a["w"].tobytes() == b["w"].tobytes()
    assert rounds[1]["w"].tobytes() != rounds[2]["w"].tobytes()  # rounds draw different noise
    fresh = make()
    assert fresh.aggregate(current, replies(1))["w"].tobytes() != rounds[1]["w"].tobytes()  # round 1, not round 2


@pytest.mark.parametrize("bad", [np.array(-1, np.int64), np.array(2.0), np.array([1, 2], np.int64), np.array(2**60, np.int64)])
def test_a_checkpoints_round_count_is_checked_before_use(bad):
    strategy = DPFixedClipping(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2, seed=7)
    with pytest.raises(ValueError, match="dp/rounds"):
        strategy.load_state({"dp/rounds": bad}, LAYOUT)
    assert strategy.rounds == 0
    strategy.load_state({}, LAYOUT)  # a checkpoint from before the count: its noise starts over
    assert strategy.rounds == 0
