"""What composes through a tree, and what is refused with the reason (#21; docs/aggregators.md).

Both ends refuse: an Aggregator is built only over plain FedAvg, and a coordinator whose strategy (a median,
Krum, central DP) or secure aggregation cannot merge merges refuses a device whose /info says it is an
aggregator, before anything is sent. A server optimizer on top of aggregators runs, and gives the flat result.
Real HTTP: every device and aggregator is served by fedsync.serve in this process's threads.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, Federated, Remote, RoundFailed
from fedsync.aggregator import Aggregator
from fedsync.strategies import DPFixedClipping, FedAdam, FedAvg, FedMedian, FedTrimmedAvg, Krum
from tests.support.devices.tree import declaration, leaf, model


@contextlib.contextmanager
def served(*feds):
    """Each FedData served over HTTP on a free port; their URLs."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(fedsync.serve(f, port=0, block=False)).url for f in feds]


@pytest.mark.parametrize(
    "strategy, why",
    [
        (FedMedian(), "median of the aggregators' medians"),
        (FedTrimmedAvg(beta=0.1), "an outlier hides"),
        (Krum(num_malicious_clients=0), "picks replies by their distances"),
        (FedAdam(), "steps the global model once per round"),
        (DPFixedClipping(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2), "central DP clips"),
    ],
)
def test_an_aggregator_is_built_over_plain_fedavg_only(strategy, why):
    with pytest.raises(ValueError, match="plain FedAvg") as refused:
        Aggregator(FedArrays(model(), strategy=strategy), ["http://127.0.0.1:9"])
    assert why in str(refused.value)
    Aggregator(FedArrays(model(), strategy=FedAvg(exact=False)), ["http://127.0.0.1:9"])  # both FedAvgs are fine


def test_an_aggregator_does_not_train_and_merges_array_models_only():
    with pytest.raises(TypeError, match="does not train"):
        Aggregator(FedArrays(model(), lambda m: 1), ["http://127.0.0.1:9"])
    with pytest.raises(TypeError, match="array models"):
        Aggregator(fedsync.FedBundle({"a": declaration()}), ["http://127.0.0.1:9"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="served as a device"):
        Aggregator(declaration(), ["http://127.0.0.1:9"]).merge([], 1)


def test_info_says_which_device_is_an_aggregator():
    with served(leaf(1, 10)) as (below,), served(Aggregator(declaration(), [below])) as (middle,):
        assert Remote(middle).info()["aggregator"] is True
        assert Remote(below).info()["aggregator"] is False


@pytest.mark.parametrize(
    "top, why",
    [
        (dict(data=FedArrays(model(), strategy=FedMedian())), "median of the aggregators' medians"),
        (
            dict(data=FedArrays(model(), strategy=DPFixedClipping(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2))),
            "central DP clips each reply",
        ),
        (dict(data=declaration(), secure_aggregation="secagg"), "secure aggregation cannot run across the levels"),
    ],
)
def test_the_top_refuses_what_cannot_merge_merges_and_keeps_the_other_devices(top, why):
    if top.get("secure_aggregation") == "secagg":
        pytest.importorskip("cryptography")
        from fedsync.secagg import SecAgg

        top["secure_aggregation"] = SecAgg()
    leaves = [leaf(seed, 10 * seed) for seed in (1, 2, 3, 4, 5)]
    with served(*leaves) as urls, served(Aggregator(declaration(), urls[:2])) as (middle,):
        with Federated(remotes=[middle, *urls[2:]], min_results=3, timeout=30, **top) as alg:
            result = alg.round()  # the three direct leaves take part; the aggregator is refused, nothing sent to it
        assert set(result.failures) == {middle} and result.failures[middle].startswith(f"TreeRefused: {middle}")
        assert why in result.failures[middle] and "Nothing was sent" in result.failures[middle]
        assert Remote(middle).info()["repetition"] == 0  # never submitted to


def test_a_server_optimizer_on_top_of_aggregators_gives_the_flat_result():
    leaves = [leaf(seed, 10 + seed) for seed in (1, 2, 3, 4)]
    with served(*leaves) as urls:
        flat = FedArrays(model(), strategy=FedAdam(eta=0.1))
        with Federated(flat, urls, timeout=30) as alg:
            flat_results = [alg.round() for _ in range(2)]
        with served(Aggregator(declaration(), urls[:2]), Aggregator(declaration(), urls[2:])) as middles:
            tree = FedArrays(model(), strategy=FedAdam(eta=0.1))
            with Federated(tree, middles, timeout=30) as alg:
                tree_results = [alg.round() for _ in range(2)]
    assert [r.samples for r in tree_results] == [r.samples for r in flat_results] == [50, 50]
    for name, a in flat.get_arrays().items():
        np.testing.assert_allclose(tree.get_arrays()[name], a, rtol=1e-5, atol=1e-6)


def test_an_aggregator_evaluates_on_the_devices_below():
    def evaluating(seed, n):
        data = leaf(seed, n)
        data.evaluate_fn = lambda m: (n, {"mse": float(seed)})
        return data

    with served(evaluating(1, 10), evaluating(2, 30)) as urls, served(Aggregator(declaration(), urls)) as (middle,):
        with Federated(declaration(), [middle], timeout=30) as alg:
            alg.round()
            evaluation = alg.evaluate()
    assert evaluation.samples == 40 and evaluation.metrics == pytest.approx({"mse": (1 * 10 + 2 * 30) / 40})


def test_a_two_level_config_reaches_the_leaves():
    seen = []

    def train(m, config):
        seen.append(dict(config))
        return 5

    with served(FedArrays(model(), train)) as urls, served(Aggregator(declaration(), urls)) as (middle,):
        with Federated(declaration(), [middle], timeout=30, config={"lr": 0.5, "epochs": 2}) as alg:
            alg.round()
    assert seen == [{"lr": 0.5, "epochs": 2}]


def test_a_failed_round_below_leaves_the_top_unchanged():
    def failing(m):
        raise RuntimeError("no data today")

    with served(FedArrays(model(), failing)) as urls, served(Aggregator(declaration(), urls)) as (middle,):
        top = declaration()
        before = {k: a.copy() for k, a in top.get_arrays().items()}
        with Federated(top, [middle], timeout=30) as alg, pytest.raises(RoundFailed) as failed:
            alg.round()
    assert "no data today" in str(failed.value) and "TrainingFailed" in failed.value.failures[middle]
    for name, a in before.items():
        np.testing.assert_array_equal(top.get_arrays()[name], a)


def test_an_aggregator_keeping_empty_rounds_answers_an_empty_reply_that_weighs_nothing():
    empty = leaf(1, 10, empty=True)  # reports 0 samples: a deliberate drop
    with served(empty, leaf(2, 30)) as urls:
        with served(Aggregator(declaration(), urls[:1], empty_rounds="keep")) as (keeping,):
            with served(Aggregator(declaration(), urls[:1])) as (failing,):
                with Federated(declaration(), [keeping, urls[1]], timeout=30) as alg:
                    kept = alg.round()
                with Federated(declaration(), [failing, urls[1]], min_results=1, timeout=30) as alg:
                    failed = alg.round()
    assert kept.failures == {} and kept.samples == 30 and kept.devices[keeping]["samples"] == 0
    assert set(failed.failures) == {failing} and failed.samples == 30
    with served(empty) as (below,), served(Aggregator(declaration(), [below], empty_rounds="keep")) as (only,):
        with Federated(declaration(), [only], timeout=30, empty_rounds="keep") as alg:
            assert alg.round().empty is True  # every reply empty: the top's own policy keeps the round
