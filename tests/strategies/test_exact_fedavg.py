"""Issue #22: FedAvg's merge of float16/float32 arrays is exact and independent of the order replies arrive
in (fedsync.strategies.exact), equal replies merge to exactly their value, and integers stay exact."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsync import FedArrays
from fedsync.data.arrays import METRICS_KEY, SAMPLES_KEY
from fedsync.strategies import FedAdam, FedAvg, FedAvgM, WeightedSum
from fedsync.wire import codec

SIZE = 6
FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
FLOAT16 = st.floats(width=16, allow_nan=False, allow_infinity=False, allow_subnormal=True)
SAMPLES = st.one_of(st.integers(1, 1000), st.integers(1, 2**53))  # past 2**29 too: split into exact parts
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def replies(values, dtype):
    return st.lists(
        st.tuples(st.lists(values, min_size=SIZE, max_size=SIZE).map(lambda v: np.array(v, dtype)), SAMPLES),
        min_size=1,
        max_size=5,
    )


def bits(a: np.ndarray) -> bytes:
    return a.tobytes()


def fold(pairs, dtype, order, cuts=()):
    """FedAvg's streaming fold of ``pairs`` in ``order``, each reply added in pieces cut at ``cuts``."""
    acc = WeightedSum({"w": np.zeros(SIZE, dtype)})
    for index in order:
        values, samples = pairs[index]
        acc.start(samples)
        edges = [0, *sorted(set(cuts)), SIZE]
        for first, end in reversed(list(itertools.pairwise(edges))):  # pieces in any order
            acc.add("w", first, values[first:end], samples)
    return acc.result(acc.total)["w"]


@PROPERTY
@given(pairs=replies(FLOAT32, np.float32), data=st.data())
def test_any_order_of_replies_and_pieces_gives_bit_identical_float32_results(pairs, data):
    first = fold(pairs, np.float32, range(len(pairs)))
    order = data.draw(st.permutations(range(len(pairs))))
    cuts = data.draw(st.lists(st.integers(1, SIZE - 1), max_size=3))
    assert bits(fold(pairs, np.float32, order, cuts)) == bits(first)


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
@PROPERTY
@given(pairs=replies(FLOAT16, np.float16), data=st.data())
def test_any_order_of_replies_gives_bit_identical_float16_results(pairs, data):
    order = data.draw(st.permutations(range(len(pairs))))
    assert bits(fold(pairs, np.float16, order)) == bits(fold(pairs, np.float16, range(len(pairs))))


@PROPERTY
@given(pairs=replies(FLOAT32, np.float32))
def test_the_float32_mean_is_within_its_stated_bound_of_the_exact_mean(pairs):
    """One float32 unit of the exact mean, plus products far below the largest rounded to 2**-35 of it."""
    got = fold(pairs, np.float32, range(len(pairs)))
    total = sum(n for _, n in pairs)
    for i in range(SIZE):
        exact = sum(Fraction(float(v[i])) * n for v, n in pairs) / total
        near = np.float32(abs(float(exact)))
        spacing = np.spacing(near)  # float32's unit there; 2**-149 at and below the subnormals
        if not np.isfinite(spacing):  # at float32's largest the unit above is infinite: take the one below
            spacing = near - np.nextafter(near, np.float32(0))
        unit = Fraction(float(spacing))
        largest = max(abs(Fraction(float(v[i]))) * n for v, n in pairs)
        bound = unit + len(pairs) * largest / 2**35 / total
        assert abs(Fraction(float(got[i])) - exact) <= bound, (i, float(exact), float(got[i]))


@PROPERTY
@given(
    value=st.lists(st.one_of(FLOAT32, FLOAT16), min_size=SIZE, max_size=SIZE),
    counts=st.lists(SAMPLES, min_size=1, max_size=8),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
)
def test_equal_replies_merge_to_exactly_their_value(value, counts, dtype):
    with np.errstate(over="ignore"):
        x = np.array(value, np.float64).astype(dtype)
    x[~np.isfinite(x)] = 0
    x[x == 0] = 0  # -0.0 merges to 0.0: a sum keeps no sign of zero
    got = fold([(x, n) for n in counts], dtype, range(len(counts)))
    assert got.dtype == dtype and bits(got) == bits(x)


@PROPERTY
@given(
    dtype=st.sampled_from(["int8", "int64", "uint64", "bool"]),
    data=st.data(),
)
def test_integer_dtypes_stay_exact_in_any_order(dtype, data):
    info = np.iinfo(dtype) if dtype != "bool" else None
    values = st.booleans() if info is None else st.integers(int(info.min), int(info.max))
    pairs = data.draw(
        st.lists(
            st.tuples(st.lists(values, min_size=SIZE, max_size=SIZE).map(lambda v: np.array(v, dtype)), SAMPLES),
            min_size=1,
            max_size=5,
        )
    )
    order = data.draw(st.permutations(range(len(pairs))))
    got = fold(pairs, dtype, order)
    total = sum(n for _, n in pairs)
    for i in range(SIZE):
        exact = sum(Fraction(int(v[i])) * n for v, n in pairs) / total
        if dtype == "bool":
            assert got[i] == (exact >= Fraction(1, 2))
        else:
            assert int(got[i]) == round(exact)  # Python rounds half to even, as FedAvg


def test_a_frozen_layer_stays_bit_identical_over_200_rounds():
    """The issue's report: 31 % of a frozen layer's elements moved by an ulp over 200 rounds of FedAvg."""
    rng = np.random.default_rng(0)
    frozen = rng.normal(0, 0.1, 4096).astype(np.float32)
    data = FedArrays({"frozen": frozen.copy(), "trained": np.zeros(8, np.float32)})
    for rep in range(1, 201):
        payloads = []
        for _ in range(8):
            trained = rng.normal(0, 1, 8).astype(np.float32)
            samples = int(rng.integers(1, 5000))
            payloads.append(
                codec.encode({"frozen": frozen, "trained": trained}, {SAMPLES_KEY: str(samples), METRICS_KEY: "{}"})
            )
        data.merge(payloads, rep)
    assert bits(data.model["frozen"]) == bits(frozen)


@pytest.mark.parametrize("strategy", [FedAvgM(server_learning_rate=1.0, server_momentum=0.9), FedAdam()])
def test_server_optimizers_read_the_exact_mean(strategy):
    """They step from the same mean in any order: the step is as reproducible as FedAvg's."""
    rng = np.random.default_rng(1)
    pairs = [(rng.normal(0, 1, SIZE).astype(np.float32) * 10.0 ** rng.integers(-8, 8), int(rng.integers(1, 99)))
             for _ in range(4)]  # fmt: skip
    current = {"w": np.ones(SIZE, np.float32)}
    results = set()
    for order in itertools.permutations(range(4)):
        fresh = type(strategy)(**({"server_momentum": 0.9} if isinstance(strategy, FedAvgM) else {}))
        merged = fresh.aggregate(current, [({"w": pairs[i][0]}, pairs[i][1]) for i in order])
        results.add(bits(merged["w"]))
    assert len(results) == 1
    assert bits(FedAvg().aggregate(current, [({"w": current["w"]}, 3)] * 3)["w"]) == bits(current["w"])


def test_fedavg_exact_false_is_the_lean_running_mean_equal_replies_still_exact():
    """``FedAvg(exact=False)``: one float32 copy instead of the exact sum's bins; equal replies merge exactly."""
    from fedsync.strategies import FedAvg

    rng = np.random.default_rng(3)
    x = rng.standard_normal(1000).astype(np.float32)
    current = {"w": np.zeros(1000, np.float32)}
    lean = FedAvg(exact=False)
    accumulator = lean.accumulator(current)
    assert accumulator.exact == {} and accumulator.sums["w"].dtype == np.float32  # no bins: one float32 copy
    merged = lean.aggregate(current, [({"w": x}, n) for n in (3, 10**6, 7, 1)])
    assert merged["w"].dtype == np.float32 and np.array_equal(merged["w"], x)
    # Different replies: within a few float32 units of the exact mean (a float32 running mean rounds each step).
    replies = [({"w": rng.standard_normal(1000).astype(np.float32)}, n) for n in (5, 9, 2)]
    exact = FedAvg().aggregate(current, replies)["w"]
    assert np.allclose(lean.aggregate(current, replies)["w"], exact, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="True or False"):
        FedAvg(exact="yes")
