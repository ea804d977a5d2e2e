"""Aggregators in a tree (#21): real device processes over HTTP on loopback, leaves and aggregators alike.

A tree of 2 aggregators x 3 leaves gives the flat round's model and metrics over several rounds; a leaf failing
below an aggregator reaches the top's round result under its path; an aggregator whose devices all fail answers
as a failure that names them.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import Federated, RoundFailed
from fedsync.wire.reports import node_name
from tests.support.devices.tree import declaration
from tests.support.processes import start_device, stop_all

pytestmark = pytest.mark.slow  # 8 to 9 device processes per test

LEAF = "tests.support.devices.tree:leaf"
AGGREGATOR = "tests.support.devices.tree:aggregator"


@pytest.fixture
def processes():
    started = []

    def start(factory, *args, **kwargs):
        started.append(start_device(factory, *args, **kwargs))
        return started[-1]

    yield start
    stop_all(started)


def run(remotes, rounds):
    """``rounds`` rounds of a fresh top coordinator from zeros: each round's result and the final arrays."""
    data = declaration()
    with Federated(data, remotes, timeout=60) as alg:
        results = [alg.round() for _ in range(rounds)]
    return results, {name: a.copy() for name, a in data.get_arrays().items()}


def test_a_tree_of_two_aggregators_over_three_leaves_each_equals_the_flat_round(processes):
    # Six leaves of different sizes; only leaves 2, 3 and 5 report the metric "extra": it must average over them
    # alone, weighted by their samples, through the tree as in the flat round.
    leaves = [processes(LEAF, seed, 20 + 7 * seed, seed in (2, 3, 5)) for seed in range(1, 7)]
    urls = [leaf.url for leaf in leaves]
    flat, flat_model = run(urls, rounds=3)
    aggregators = [processes(AGGREGATOR, urls[:3]), processes(AGGREGATOR, urls[3:])]
    tree, tree_model = run([a.url for a in aggregators], rounds=3)

    for number, (f, t) in enumerate(zip(flat, tree, strict=True)):
        assert t.failures == {} and f.failures == {}
        assert t.samples == f.samples == sum(20 + 7 * s for s in range(1, 7))
        assert t.metrics.keys() == f.metrics.keys() == {"loss", "extra"}
        # Round 1 trains from the same zeros: the metrics differ only by the means' rounding. Later rounds
        # start from models that differ by float32 rounding (the tree rounds each aggregator's mean).
        for name in f.metrics:
            assert t.metrics[name] == pytest.approx(f.metrics[name], rel=1e-12 if number == 0 else 1e-6), name
    # "extra" over leaves 2, 3, 5 only (34, 41 and 55 samples), not over every sample of their aggregators
    assert tree[-1].metrics["extra"] == pytest.approx((2 * 34 + 3 * 41 + 5 * 55) / (34 + 41 + 55), rel=1e-12)
    for name in flat_model:
        np.testing.assert_allclose(tree_model[name], flat_model[name], rtol=1e-6, atol=1e-7)
    assert not np.array_equal(flat_model["w"], np.zeros((3, 1), np.float32))  # the rounds trained something
    # Each aggregator's row: the sum of its leaves' samples
    assert [tree[0].devices[a.url]["samples"] for a in aggregators] == [27 + 34 + 41, 48 + 55 + 62]


def test_a_leaf_failing_below_an_aggregator_is_named_by_its_path_at_the_top(processes):
    good = [processes(LEAF, seed, 30) for seed in (1, 2)]
    bad = processes(LEAF, 3, 30, False, True)  # its train raises
    other = processes(LEAF, 4, 30)
    middle = processes(AGGREGATOR, [good[0].url, good[1].url, bad.url], 2)  # min_results=2: merges without it
    with Federated(declaration(), [middle.url, other.url], timeout=60) as alg:
        result = alg.round()
    path = f"{node_name(middle.url)}/{node_name(bad.url)}"
    assert set(result.failures) == {path}
    assert "leaf 3 cannot train today" in result.failures[path]
    assert result.samples == 90 and result.devices[middle.url]["samples"] == 60  # the two good leaves below


def test_an_aggregator_whose_devices_all_fail_answers_as_a_failure_naming_them(processes):
    bad = [processes(LEAF, seed, 30, False, True) for seed in (1, 2)]
    empty = processes(LEAF, 3, 30, False, False, True)  # reports 0 samples
    middle = processes(AGGREGATOR, [b.url for b in bad])
    hollow = processes(AGGREGATOR, [empty.url])
    other = processes(LEAF, 4, 30)
    with Federated(declaration(), [middle.url, hollow.url, other.url], min_results=1, timeout=60) as alg:
        result = alg.round()
    assert result.samples == 30 and set(result.devices) == {other.url}
    failed = result.failures[middle.url]
    assert "TrainingFailed" in failed and all(node_name(b.url) in failed for b in bad), failed
    assert "reported 0 samples" in result.failures[hollow.url], result.failures[hollow.url]


def test_the_top_refuses_a_median_over_an_aggregator_with_the_reason(processes):
    from fedsync import FedArrays
    from fedsync.strategies import FedMedian
    from tests.support.devices.tree import model

    leaf = processes(LEAF, 1, 30)
    middle = processes(AGGREGATOR, [leaf.url])
    with Federated(FedArrays(model(), strategy=FedMedian()), [middle.url], timeout=30) as alg:
        with pytest.raises(RoundFailed) as failed:
            alg.round()
    why = failed.value.failures[middle.url]
    assert why.startswith("TreeRefused:") and "median of the aggregators' medians" in why, why
