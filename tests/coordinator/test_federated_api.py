"""Promises of the public API that had no test (issue #15 A8): argument checks, evaluation, early stopping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsync import EarlyStopping, EvaluationResult, FedArrays, Federated, RoundResult


def weights() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


URLS = ["http://127.0.0.1:1", "http://127.0.0.1:2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"remotes": []}, "at least one remote"),
        ({"remotes": [URLS[0], URLS[0] + "/"]}, "listed twice"),
        ({"fraction": 0}, "fraction must be"),
        ({"fraction": 1.5}, "fraction must be"),
        ({"fraction": math.nan}, "fraction must be"),
        ({"fraction": True}, "fraction must be"),
        ({"fraction": "0.5"}, "fraction must be"),
        ({"min_results": 0}, "min_results must be"),
        ({"min_results": 3}, "min_results must be"),
        ({"min_results": 1.0}, "min_results must be"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": math.inf}, "timeout must be"),
        ({"timeout": -1}, "timeout must be"),
        ({"downloads": 0}, "downloads must be"),
        ({"workers": 0}, "workers must be"),
    ],
)
def test_federated_refuses_bad_arguments_with_what_to_do(kwargs, message):
    arguments = {"remotes": URLS, **kwargs}
    with pytest.raises(ValueError, match=message):
        Federated(weights(), **arguments)


def test_federated_needs_a_fed_data():
    with pytest.raises(TypeError, match="must be a FedData"):
        Federated({"w": np.zeros(2)}, URLS)


@pytest.mark.parametrize("fraction, devices, sampled", [(0.14, 50, 7), (0.5, 3, 2), (0.01, 7, 1), (1.0, 7, 7), (np.float32(0.5), 4, 2)])
def test_sampling_takes_the_exact_ceiling_and_at_least_min_results(fraction, devices, sampled):
    urls = [f"http://127.0.0.1:{port}" for port in range(1, devices + 1)]
    with Federated(weights(), urls, fraction=fraction, seed=0) as alg:
        assert len(alg.sample()) == sampled
    with Federated(weights(), urls, fraction=fraction, min_results=devices, seed=0) as alg:
        assert len(alg.sample()) == devices


def test_evaluate_restores_the_devices_own_arrays_even_when_the_callback_raises():
    seen = {}

    def evaluate(model):
        seen["w"] = float(model["w"][0, 0])
        if seen.get("fail"):
            raise RuntimeError("evaluation broke")
        return 4, {"m": seen["w"]}

    device = FedArrays({"w": np.full((3, 2), 5.0, np.float32), "b": np.zeros(2, np.float32)}, evaluate=evaluate)
    coordinator = FedArrays({"w": np.full((3, 2), 9.0, np.float32), "b": np.zeros(2, np.float32)})
    assert device.evaluate(coordinator.serialize(1), 1) == (4, {"m": 9.0})
    assert np.all(device.model["w"] == 5.0)
    seen["fail"] = True
    with pytest.raises(RuntimeError, match="evaluation broke"):
        device.evaluate(coordinator.serialize(1), 1)
    assert seen["w"] == 9.0 and np.all(device.model["w"] == 5.0)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_federated_evaluation_averages_only_the_devices_that_answered(devices):
    good = [devices("evaluating", 1.0, 3, 10, 0.9), devices("evaluating", 1.0, 3, 30, 0.5)]
    with Federated(weights(), [d.url for d in good] + ["http://127.0.0.1:9"], timeout=20) as alg:
        result = alg.evaluate()
    assert set(result.devices) == {d.url for d in good}
    assert list(result.failures) == ["http://127.0.0.1:9"] and "cannot connect" in result.failures["http://127.0.0.1:9"]
    assert result.samples == 40
    assert result.metrics["accuracy"] == pytest.approx((10 * 0.9 + 30 * 0.5) / 40)


def rounds_with(values, evaluation):
    out = []
    for i, value in enumerate(values, 1):
        metrics = {"accuracy": value}
        out.append(RoundResult(repetition=i, evaluation=EvaluationResult(repetition=i, metrics=metrics)) if evaluation else RoundResult(repetition=i, metrics=metrics))
    return out


@pytest.mark.parametrize("evaluation", [True, False])
def test_early_stopping_in_max_mode_stops_after_patience_rounds_without_a_new_best(evaluation):
    stop = EarlyStopping("accuracy", patience=2, mode="max", evaluation=evaluation)
    decisions = [stop(None, r) for r in rounds_with([0.5, 0.7, 0.7, 0.6, 0.8, 0.8, 0.79], evaluation)]
    assert decisions == [False, False, False, True, False, False, True]
    assert stop.best == 0.8


def test_early_stopping_ignores_rounds_without_the_metric():
    stop = EarlyStopping("accuracy", patience=1, mode="max", evaluation=True)
    assert [stop(None, r) for r in rounds_with([0.5, 0.4], evaluation=False)] == [False, False]
    with pytest.raises(ValueError, match="'max' or 'min'"):
        EarlyStopping("accuracy", mode="highest")


def test_early_stopping_watches_the_servers_evaluate_fn_and_stops_a_real_fit():
    """source='server': the metric of Federated(evaluate_fn=...), which Flower users evaluate with."""
    import fedsync

    def train(model):
        model["w"] += 1.0
        return 10

    scores = iter([0.5, 0.6, 0.6, 0.55, 0.9, 0.9])
    device = fedsync.serve(FedArrays({"w": np.zeros(2)}, train), port=0, block=False)
    try:
        with Federated(FedArrays({"w": np.zeros(2)}), [device.url], evaluate_fn=lambda model, server_round: {"acc": next(scores)}) as alg:
            history = alg.fit(6, callbacks=[EarlyStopping("acc", patience=2, source="server")], progress=False)
    finally:
        device.close()
    assert len(history) == 4  # best 0.6 at round 2, then 0.6 and 0.55: two without a new best
    assert history.metric("acc", server=True) == [0.5, 0.6, 0.6, 0.55]


def test_early_stopping_warns_once_when_its_metric_is_never_measured(caplog):
    stop = EarlyStopping("accuracy", patience=1, source="evaluation")
    rounds = [RoundResult(repetition=i, evaluation=EvaluationResult(repetition=i, metrics={"loss": 0.3})) for i in (1, 2)]
    with caplog.at_level("WARNING", logger="fedsync.callbacks"):
        assert [stop(None, r) for r in rounds] == [False, False]
    warnings = [r.getMessage() for r in caplog.records if r.name == "fedsync.callbacks"]
    assert warnings == [
        "EarlyStopping('accuracy') found no 'accuracy' in round 1's evaluation metrics (found: loss); it cannot stop this run "
        "until that metric is measured. Check the name, or pass source='evaluation', 'server' or 'train'"
    ]


@pytest.mark.parametrize("bad, match", [({"source": "devices"}, "source must be one of"), ({"patience": 0}, "patience must be a positive integer")])
def test_early_stopping_refuses_a_bad_source_or_patience(bad, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping("accuracy", **bad)
