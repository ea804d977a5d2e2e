"""Issue #23 item 4: every strategy's merge is a function of the round's replies, not of the order they arrive in.

The same replies, permuted, give bit-identical arrays for float32 and float64 models: FedAvg (float64
through ExactSum's float64 variant), the server optimizers (they step from that mean), the robust family
(replies read back in a canonical order: ties, means of kept replies, spilled stores), and central DP
(an exact sum of the clipped updates, seeded noise). ``FedAvg(exact=False)`` is documented as the one
order-dependent merge.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsync.strategies import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    WeightedSum,
)
from fedsync.strategies.exact import ExactSum

SIZE = 5
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FLOAT64 = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)
MODERATE = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)
SAMPLES = st.one_of(st.integers(1, 1000), st.integers(1, 2**53))


def bits(arrays: dict[str, np.ndarray]) -> bytes:
    return b"".join(arrays[name].tobytes() for name in sorted(arrays))


def replies(values, dtype, min_size=1, max_size=6):
    row = st.lists(values, min_size=SIZE, max_size=SIZE).map(lambda v: np.array(v, np.float64).astype(dtype))
    return st.lists(st.tuples(row, SAMPLES), min_size=min_size, max_size=max_size)


def merged(make, current, pairs, order):
    """A fresh strategy from ``make()`` merging ``pairs`` in ``order``; the whole replies, as FedArrays hands them."""
    return make().aggregate(current, [({"w": pairs[i][0]}, pairs[i][1]) for i in order])


def all_orders_agree(make, current, pairs, data) -> None:
    first = bits(merged(make, current, pairs, range(len(pairs))))
    for _ in range(3):
        order = data.draw(st.permutations(range(len(pairs))))
        assert bits(merged(make, current, pairs, order)) == first, order


# -- FedAvg and the server optimizers: float64 through the exact sum -----------------------------------


@PROPERTY
@given(pairs=replies(FLOAT64, np.float64), data=st.data())
def test_fedavg_float64_merge_is_bit_identical_in_any_order(pairs, data):
    """Failed before: float64 arrays kept a running mean, whose last bits follow the arrival order."""
    all_orders_agree(FedAvg, {"w": np.zeros(SIZE)}, pairs, data)


@PROPERTY
@given(pairs=replies(FLOAT64, np.float64), cuts=st.lists(st.integers(1, SIZE - 1), max_size=3), data=st.data())
def test_float64_pieces_in_any_order_and_cut_anywhere_give_the_same_sum(pairs, cuts, data):
    """The streaming fold (FedArrays adds a reply piece by piece as it downloads) ends the same however cut."""

    def fold(order, edges):
        acc = WeightedSum({"w": np.zeros(SIZE)})
        for index in order:
            values, samples = pairs[index]
            acc.start(samples)
            for first, end in reversed(list(itertools.pairwise(edges))):
                acc.add("w", first, values[first:end], samples)
        return acc.result(acc.total)["w"].tobytes()

    order = data.draw(st.permutations(range(len(pairs))))
    assert fold(order, [0, *sorted(set(cuts)), SIZE]) == fold(range(len(pairs)), [0, SIZE])


@PROPERTY
@given(pairs=replies(FLOAT64, np.float64))
def test_the_float64_mean_is_within_two_units_of_the_exact_mean(pairs):
    """Not only reproducible: close. Products far below an element's largest are rounded (2**-64 of it)."""
    total = sum(n for _, n in pairs)
    got = FedAvg().aggregate({"w": np.zeros(SIZE)}, [({"w": v}, n) for v, n in pairs])["w"]
    for i in range(SIZE):
        exact = sum(Fraction(float(v[i])) * n for v, n in pairs) / total
        largest = max(abs(Fraction(float(v[i]))) * n for v, n in pairs)
        unit = Fraction(float(np.spacing(np.nextafter(abs(float(exact)), 0)))) if exact else Fraction(0)
        bound = 2 * unit + len(pairs) * largest / 2**63 / total + Fraction(2) ** -1074
        assert abs(Fraction(float(got[i])) - exact) <= bound, (i, float(exact), float(got[i]))


@PROPERTY
@given(value=st.lists(FLOAT64, min_size=SIZE, max_size=SIZE), counts=st.lists(st.integers(1, 2**28), max_size=6))
def test_equal_float64_replies_merge_to_exactly_their_value(value, counts):
    """A frozen float64 layer stays bit-identical, as the running mean kept it (below 2**29 samples a round)."""
    x = np.array(value, np.float64)
    x[x == 0] = 0  # -0.0 merges to 0.0: a sum keeps no sign of zero
    counts = counts or [1]
    got = FedAvg().aggregate({"w": np.zeros(SIZE)}, [({"w": x}, n) for n in counts])["w"]
    assert got.tobytes() == x.tobytes()


def test_the_float64_exact_sum_takes_the_whole_range():
    """Subnormals, float64's largest values and mixed scales in one element: finite, order-free, close."""
    big = np.finfo(np.float64).max
    values = [
        np.array([big, -big, 5e-324, 1e300, 1.0]),
        np.array([big, big * 0.5, 5e-324 * 3, -1e-300, 2.0**-1074]),
        np.array([big * 0.75, -big, 0.0, 1e-300, -1.0]),
    ]
    counts = [3, 2**53, 7]
    results = set()
    for order in itertools.permutations(range(3)):
        acc = ExactSum(5, np.float64)
        for i in order:
            acc.add(0, values[i], counts[i])
        results.add(acc.mean(sum(counts), np.float64).tobytes())
    assert len(results) == 1
    got = np.frombuffer(results.pop())
    assert np.isfinite(got).all()
    exact = [float(sum(Fraction(float(v[i])) * n for v, n in zip(values, counts)) / sum(counts)) for i in range(5)]
    assert np.allclose(got, exact, rtol=4e-16, atol=0)


def test_exact_sum_refuses_what_it_cannot_sum():
    with pytest.raises(ValueError, match="float16, float32 or float64"):
        ExactSum(3, np.int32)


SERVER_OPTIMIZERS = [
    lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    lambda: FedAdam(eta=0.05),
    lambda: FedYogi(),
    lambda: FedAdagrad(beta_1=0.5),
]


@pytest.mark.parametrize("make", SERVER_OPTIMIZERS, ids=["FedAvgM", "FedAdam", "FedYogi", "FedAdagrad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_server_optimizers_step_bit_identically_from_any_order(make, dtype):
    """They step from FedAvg's mean: exact for float32 since #22, for float64 now (failed before for float64).

    Two rounds, so the state (momentum, ``m``, ``v``) that the first leaves is part of what must agree.
    """
    rng = np.random.default_rng(7)
    current = {"w": rng.standard_normal(64).astype(dtype)}
    rounds = [[(rng.standard_normal(64).astype(dtype), int(rng.integers(1, 10**6))) for _ in range(5)] for _ in "ab"]
    results = set()
    for order in itertools.islice(itertools.permutations(range(5)), 0, 120, 7):
        strategy, model = make(), current
        for pairs in rounds:
            model = strategy.aggregate(model, [({"w": pairs[i][0]}, pairs[i][1]) for i in order])
        results.add(bits(model) + b"".join(a.tobytes() for a in strategy.state().values()))
    assert len(results) == 1


def test_fedavg_exact_false_stays_order_dependent_as_documented():
    """The lean merge is the documented exception: some order changes the last bits (float32 and float64)."""
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        pairs = [(rng.standard_normal(256).astype(dtype), int(rng.integers(1, 1000))) for _ in range(6)]
        current = {"w": np.zeros(256, dtype)}
        results = {
            bits(merged(lambda: FedAvg(exact=False), current, pairs, order))
            for order in itertools.islice(itertools.permutations(range(6)), 0, 720, 37)
        }
        assert len(results) > 1, dtype


# -- the robust family: replies read back in a canonical order ------------------------------------------

ROBUST = {
    "FedMedian": lambda spill: FedMedian(spill_bytes=spill),
    "FedTrimmedAvg": lambda spill: FedTrimmedAvg(beta=0.2, spill_bytes=spill),
    "Krum": lambda spill: Krum(num_malicious_clients=1, spill_bytes=spill),
    "MultiKrum": lambda spill: MultiKrum(num_malicious_clients=1, spill_bytes=spill),
    "Bulyan": lambda spill: Bulyan(num_malicious_clients=1, spill_bytes=spill),
}
# Values with ties and signed zeros, where "the earlier reply" and a partition's choice show.
TIED = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 3.0])


@pytest.mark.parametrize("name", sorted(ROBUST))
# float64 in the full suite: the same code path with wider values (the fast tier stays under 90 s)
@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
@PROPERTY
@given(data=st.data())
def test_robust_strategies_give_bit_identical_results_in_any_order(name, dtype, data):
    """FedTrimmedAvg's and MultiKrum's means of kept rows, Krum's and Bulyan's ties, the median's signed zeros:
    each followed the arrival order before the replies were read back by digest."""
    values = st.one_of(MODERATE, TIED, FLOAT64) if dtype == np.float64 else st.one_of(MODERATE, TIED)
    pairs = data.draw(replies(values, dtype, min_size=7, max_size=9))
    spill = data.draw(st.sampled_from([None, 0, SIZE * np.dtype(dtype).itemsize * 3]))  # RAM, spilled, both
    all_orders_agree(lambda: ROBUST[name](spill), {"w": np.zeros(SIZE, dtype)}, pairs, data)


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_a_tie_between_different_replies_is_broken_by_content_not_arrival(name):
    """Replies on a line, evenly spaced: Krum's scores tie; each order of arrival once picked its own first."""
    pairs = [(np.full(SIZE, v), 1) for v in (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)]
    results = {
        bits(merged(lambda: ROBUST[name](None), {"w": np.zeros(SIZE)}, pairs, order))
        for order in itertools.islice(itertools.permutations(range(7)), 0, 5040, 97)
    }
    assert len(results) == 1


def test_robust_results_agree_whether_replies_stay_in_ram_or_spill():
    """The spill file holds the same bytes: every split between RAM and disk, every order, one result."""
    rng = np.random.default_rng(5)
    pairs = [(rng.standard_normal(SIZE), int(rng.integers(1, 100))) for _ in range(8)]
    for name, make in ROBUST.items():
        results = {
            bits(merged(lambda: make(spill), {"w": np.zeros(SIZE)}, pairs, order))  # noqa: B023
            for spill in (None, 0, SIZE * 8 * 3)
            for order in itertools.islice(itertools.permutations(range(8)), 0, 40320, 4001)
        }
        assert len(results) == 1, name


# -- central DP: an exact sum of the clipped updates, seeded noise ---------------------------------------


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
def test_central_dp_with_a_seed_is_bit_identical_in_any_order(adaptive, dtype):
    """Failed before: the clipped updates were added into a running float sum in arrival order.

    Two rounds, so the adaptive clipping norm the first round leaves must agree too; some replies are clipped.
    """
    pytest.importorskip("dp_accounting")
    from fedsync.strategies import DPAdaptiveClipping, DPFixedClipping

    def make():
        if adaptive:
            return DPAdaptiveClipping(
                FedAdam(eta=0.05), noise_multiplier=0.5, num_sampled_clients=6, initial_clipping_norm=3.0, seed=11
            )
        return DPFixedClipping(noise_multiplier=0.5, clipping_norm=3.0, num_sampled_clients=6, seed=11)

    rng = np.random.default_rng(2)
    current = {"w": rng.standard_normal(300).astype(dtype), "steps": np.array([4], np.int64)}
    rounds = [
        [
            (rng.standard_normal(300).astype(dtype) * scale, int(rng.integers(1, 50)))
            for scale in (0.1, 0.2, 5, 9, 1, 0.3)
        ]
        for _ in "ab"
    ]
    results = set()
    for order in itertools.islice(itertools.permutations(range(6)), 0, 720, 61):
        strategy, model = make(), current
        for pairs in rounds:
            model = strategy.aggregate(
                model, [({"w": pairs[i][0], "steps": current["steps"]}, pairs[i][1]) for i in order]
            )
        assert strategy.last_round["clipped"] > 0
        results.add(bits(model) + b"".join(a.tobytes() for a in strategy.state().values()))
    assert len(results) == 1
