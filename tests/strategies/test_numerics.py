"""Issue #22: merging numerics. Finite replies merge to finite values (no intermediate overflow), whatever
the strategy; FedAvg is exact and independent of the replies' order (see also test_exact_fedavg.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import privacy
from fedsync.strategies import Bulyan, DPFixedClipping, FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum

F32 = np.finfo(np.float32).max  # 3.4e38
F64 = np.finfo(np.float64).max  # 1.8e308


def merged(strategy, values, dtype, samples=None):
    current = {"w": np.zeros(len(values[0]), dtype)}
    replies = [({"w": np.array(v, dtype)}, n) for v, n in zip(values, samples or [1] * len(values), strict=True)]
    return strategy.aggregate(current, replies)["w"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_median_of_the_largest_finite_values_is_finite(dtype):
    big = float(np.finfo(dtype).max)
    out = merged(FedMedian(), [[big, -big, big], [big * 0.9, -big * 0.9, -big]], dtype)  # two replies: means
    expected = np.array([big * 0.95, -big * 0.95, 0.0])
    assert out.dtype == np.dtype(dtype) and np.isfinite(out).all(), out
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert merged(FedMedian(), [[1.0], [2.0]], dtype)[0] == 1.5  # ordinary values as before


@pytest.mark.parametrize("strategy", [FedTrimmedAvg(beta=0.0), MultiKrum(num_malicious_clients=0)])
def test_means_of_float64_values_near_their_limit_are_finite(strategy):
    values = [[-F64 * 0.9], [F64 * 0.9], [F64 * 0.9]]
    out = merged(strategy, values, "float64")
    assert np.isfinite(out).all() and out[0] == pytest.approx(F64 * 0.3, rel=1e-12)
    assert merged(strategy, [[F64 * 0.9]] * 3, "float64")[0] == F64 * 0.9  # equal replies: that value exactly


def test_krum_picks_by_distance_when_float64_squares_overflow():
    """Distances of 1e299 square past float64: measured scaled, Krum still picks the most central reply."""
    values = [[1.0e300], [1.1e300], [0.9e300], [1.05e300], [-F64]]
    assert merged(Krum(num_malicious_clients=1), values, "float64")[0] == 1.05e300
    out = merged(Bulyan(num_malicious_clients=0), [[-F64 * 0.9], [F64 * 0.9], [F64 * 0.8]], "float64")
    assert np.isfinite(out).all()


def test_a_server_step_is_finite_where_its_result_is():
    """FedAvgM steps halfway from -3e38 to 3e38: the pseudo-gradient (6e38) passes float32, the new model (0) not."""
    current = {"w": np.array([-F32 * 0.9], np.float32)}
    out = FedAvgM(server_learning_rate=0.5).aggregate(current, [({"w": np.array([F32 * 0.9], np.float32)}, 1)])
    assert out["w"][0] == 0.0


def test_central_dp_clips_a_float64_update_whose_square_overflows_instead_of_dropping_it():
    """An update of 1e200 has norm 1e200, not infinity (which counted as no update at all)."""
    assert privacy.update_norm({"w": np.array([1e200, 0.0])}, {"w": np.zeros(2)}) == 1e200
    assert privacy.update_norm({"w": np.array([F64 * 0.4, 0.0])}, {"w": np.array([-F64 * 0.4, 0.0])}) == F64 * 0.8
    dp = DPFixedClipping(noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=1)
    out = dp.aggregate({"w": np.zeros(2)}, [({"w": np.array([1e200, 0.0])}, 1)])
    assert out["w"].tolist() == [1.0, 0.0]
    local = privacy.LocalDP(clipping_norm=2.0, noise_multiplier=0.0)
    clipped = local.apply({"w": np.array([1e200, 0.0])}, {"w": np.zeros(2)})
    assert clipped["w"].tolist() == [2.0, 0.0]
