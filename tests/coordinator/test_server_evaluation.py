"""Server-side evaluation (issue #12, point 6): ``Federated(evaluate_fn=..., evaluate_fn_every=n)``.

The merged global model is measured on data the coordinator holds; the result
lands in ``RoundResult.server_evaluation``, apart from federated evaluation, in
History's JSON, checkpoints and the dashboard. A failing ``evaluate_fn`` is
recorded, and the round is kept.
"""

from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pytest
import requests

from fedsync import FedArrays, Federated, History
from fedsync.coordinator.history import RoundResult, ServerEvaluation
from tests.support.devices.basic import linear_regression_data
from tests.support.seed_fedfloat import FedFloat
from tests.support.browser import CHROMIUM, chromium, needs_browser

X_HELD, Y_HELD = linear_regression_data(seed=99, n=50)  # the coordinator's own data, on no device


def weights() -> FedArrays:
    """The coordinator's side of tests/support/devices/basic.py's ``linreg``."""
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


def mse(model) -> float:
    return float(((X_HELD @ model["w"] + model["b"] - Y_HELD) ** 2).mean())


def latest_history(folder) -> History:
    """The History of a checkpoint folder's newest round (fedsync.coordinator.checkpoint's layout)."""
    return History.load(sorted(folder.glob("round-*/history.json"))[-1])


@pytest.mark.slow  # ~1.0 s: keeps the fast tier under 90 s
def test_evaluate_fn_measures_each_merged_model_on_the_coordinators_data(devices):
    a, b = devices("linreg", 1, 40), devices("linreg", 2, 60)
    calls = []

    def evaluate_fn(model, server_round):
        calls.append((server_round, {k: v.copy() for k, v in model.items()}))
        return {"mse": mse(model)}

    data = weights()
    with Federated(data, [a.url, b.url], evaluate_fn=evaluate_fn) as alg:
        first = alg.round()
        assert first.server_evaluation.metrics == {"mse": mse(data.model)}  # the model as merged
        history = alg.fit(3, evaluate_every=3, progress=False)
    assert [rnd for rnd, _ in calls] == [1, 2, 3]
    np.testing.assert_array_equal(calls[-1][1]["w"], data.model["w"])
    for result in history:
        assert result.server_evaluation.repetition == result.repetition
        assert result.server_evaluation.error is None and result.server_evaluation.seconds >= 0
    # Distinct from federated evaluation, which only round 3 had, on the devices' data.
    assert [r.evaluation is not None for r in history] == [False, False, True]
    assert history[2].evaluation.metrics != history[2].server_evaluation.metrics
    errors = history.metric("mse", server=True)
    assert errors[0] > errors[-1] and errors[-1] < 0.1
    assert history.metric("mse", evaluation=True)[:2] == [None, None]


def test_every_nth_round_counting_rounds_restored_from_a_checkpoint(devices, tmp_path):
    a = devices("linreg", 1, 40)
    rounds = []
    every = lambda model, server_round: rounds.append(server_round) or {"mse": mse(model)}
    with Federated(weights(), [a.url], evaluate_fn=every, evaluate_fn_every=2, checkpoint=tmp_path) as alg:
        alg.fit(3, progress=False)
    assert rounds == [2]
    with Federated(weights(), [a.url], evaluate_fn=every, evaluate_fn_every=2, checkpoint=tmp_path) as resumed:
        # The checkpoint's history, server evaluations included, passed its checks.
        assert [r.server_evaluation is not None for r in resumed.history] == [False, True, False]
        assert resumed.history[1].server_evaluation.metrics["mse"] > 0
        resumed.fit(6, progress=False)
    assert rounds == [2, 4, 6]
    saved = latest_history(tmp_path)
    assert [r.repetition for r in saved if r.server_evaluation is not None] == [2, 4, 6]


@pytest.mark.parametrize(
    "returned, error",
    [
        (ZeroDivisionError("no held-out data"), "ZeroDivisionError: no held-out data"),
        ({"mse": math.nan}, "ValueError: evaluate_fn's metrics: metric 'mse' must be a finite number"),
        ([0.1, 0.2], "TypeError: evaluate_fn(model, server_round) must return a dict of metrics"),
    ],
)
def test_a_failing_evaluate_fn_is_recorded_and_the_round_kept(devices, tmp_path, caplog, returned, error):
    a = devices("constant", 2.0, 10)

    def evaluate_fn(model, server_round):
        if server_round == 2:
            if isinstance(returned, Exception):
                raise returned
            return returned
        return {"mean": float(model["w"].mean())}

    data = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    with caplog.at_level(logging.ERROR, logger="fedsync"):
        with Federated(data, [a.url], evaluate_fn=evaluate_fn, checkpoint=tmp_path) as alg:
            history = alg.fit(3, progress=False)
    assert len(history) == 3 and float(data.model["w"].mean()) == 2.0  # every round merged
    failed = history[1].server_evaluation
    assert failed.metrics == {} and failed.error.startswith(error), failed.error
    assert history[2].server_evaluation.metrics == {"mean": 2.0}
    assert "evaluate_fn failed after round 2" in caplog.text and "Traceback" in caplog.text
    assert latest_history(tmp_path)[1].server_evaluation.error == failed.error


def test_flowers_loss_and_metrics_pair_and_none(devices):
    a = devices("linreg", 1, 40)
    answers = iter([(0.25, {"accuracy": 0.5}), None])
    with Federated(weights(), [a.url], evaluate_fn=lambda model, rnd: next(answers)) as alg:
        assert alg.round().server_evaluation.metrics == {"loss": 0.25, "accuracy": 0.5}
        assert alg.round().server_evaluation.metrics == {}


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_a_custom_fed_data_is_handed_itself(devices):
    one, three = devices("fedfloat", 1.0), devices("fedfloat", 3.0)
    with Federated(FedFloat(10.0), [one.url, three.url], evaluate_fn=lambda data, rnd: {"value": data.value}) as alg:
        assert alg.round().server_evaluation.metrics == {"value": 2.0}


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="evaluate_fn must be a function"):
        Federated(weights(), ["http://127.0.0.1:9"], evaluate_fn={"mse": 0.1})
    for every in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="evaluate_fn_every must be an integer >= 1"):
            Federated(weights(), ["http://127.0.0.1:9"], evaluate_fn=mse, evaluate_fn_every=every)


# -- History's JSON ---------------------------------------------------------------------------


def test_history_json_round_trips_and_reads_files_written_before_the_field_existed():
    history = History([RoundResult(1, server_evaluation=ServerEvaluation(1, {"accuracy": 0.9}, None, 0.5)), RoundResult(2)])
    again = History.from_json(history.to_json())
    assert again.rounds == history.rounds
    old = json.loads(history.to_json())
    for row in old["rounds"]:
        del row["server_evaluation"]
    assert [r.server_evaluation for r in History.from_json(json.dumps(old))] == [None, None]


@pytest.mark.parametrize(
    "server, words",
    [
        ({"repetition": 1, "metrics": {"accuracy": "high"}}, "must be a number"),
        ({"repetition": 1, "metrics": {}, "error": 3}, "error must be null or a string"),
        ({"repetition": 1, "error": "x" * 2001}, "at most 2000"),
        ({"repetition": -1}, "repetition must be an integer"),
        ({"metrics": {}}, "lacks 'repetition'"),
        ({"repetition": 1, "seconds": -1.0}, "seconds must be a finite non-negative"),
        ({"repetition": 1, "devices": {}}, "unknown keys ['devices']"),
        ([1], "must be a JSON object or null"),
    ],
)
def test_a_malformed_server_evaluation_in_a_history_file_is_refused(server, words):
    row = {"repetition": 1, "server_evaluation": server}
    with pytest.raises(ValueError) as caught:
        History.from_json(json.dumps({"rounds": [row]}))
    assert words in str(caught.value) and "round 1" in str(caught.value), str(caught.value)


# -- the dashboard ------------------------------------------------------------------------------


def test_the_dashboard_serves_the_server_series(devices):
    a = devices("linreg", 1, 40)
    with Federated(weights(), [a.url], evaluate_fn=lambda model, rnd: {"mse": mse(model), "held_out": 50}, evaluate_fn_every=2, dashboard=0) as alg:
        alg.fit(4, progress=False)
        history = requests.get(alg.dashboard.url + "/api/history", timeout=30).json()
    assert history["metrics"] == {"training": ["mse"], "evaluation": [], "server": ["mse", "held_out"]}
    assert [r["server"] and r["server"]["held_out"] for r in history["rounds"]] == [None, 50.0, None, 50.0]


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
@needs_browser
def test_the_page_charts_the_server_series_in_headless_chromium(devices, tmp_path):
    assert CHROMIUM, "chromium is not installed: apt-get install chromium-headless-shell"
    a = devices("linreg", 1, 40)
    with Federated(weights(), [a.url], evaluate_fn=lambda model, rnd: {"mse": mse(model), "held_out": 50}, evaluate_fn_every=2, dashboard=0) as alg:
        alg.fit(4, progress=False)
        dom = chromium(alg.dashboard.url + "/", tmp_path, "--dump-dom")
    assert re.search(r'<div class="chart" data-metric="mse" data-points="training:4,server:2">.*?<canvas', dom, re.S)
    assert re.search(r'<div class="chart" data-metric="held_out" data-points="server:2">', dom)
