"""A saved history is strict JSON (a key given twice is refused, naming it), and Federated checks ``poll``."""

import json
import math

import numpy as np
import pytest

from fedsync import FedArrays, Federated, History, RoundResult

ROW = {"repetition": 1, "answered": ["http://a"], "failures": {}, "metrics": {"loss": 0.5}, "seconds": 1.0}


def text(row: str) -> str:
    return '{"rounds": [%s]}' % row


@pytest.mark.parametrize(
    "document, why",
    [
        (text(json.dumps(ROW)[:-1] + ', "seconds": 2.0}'), "history has the key 'seconds' twice"),
        ('{"rounds": [], "rounds": [%s]}' % json.dumps(ROW), "history has the key 'rounds' twice"),
        (text(json.dumps({**ROW, "metrics": "@"}).replace('"@"', '{"loss": 0.5, "loss": 9.0}')), "the key 'loss' twice"),
        (text(json.dumps(ROW).replace("0.5", "NaN")), "history holds NaN, not a finite number"),
    ],
    ids=["seconds-twice", "rounds-twice", "metric-twice", "nan"],
)
def test_a_history_file_with_a_key_twice_or_a_constant_is_refused_naming_it(tmp_path, document, why):
    json.loads(document)  # Python's own json reads it: the refusal is strict JSON's
    path = tmp_path / "history.json"
    path.write_text(document)
    with pytest.raises(ValueError, match=why):
        History.load(path)
    with pytest.raises(ValueError, match=why):
        History.from_json(document)


def test_a_history_fedsync_wrote_still_loads():
    history = History([RoundResult(repetition=1, answered=["http://a"], metrics={"loss": 0.5})])
    assert History.from_json(history.to_json()).rounds == history.rounds


@pytest.mark.parametrize("poll", [0, -1.0, True, math.nan, math.inf, "10", None])
def test_poll_must_be_a_positive_finite_number_of_seconds(poll):
    with pytest.raises(ValueError, match=r"poll must be a positive number of seconds, got .*; e\.g\. poll=10\.0"):
        Federated(FedArrays({"w": np.zeros(2)}), ["http://127.0.0.1:9"], poll=poll)


def test_a_good_poll_is_kept_as_a_float():
    assert Federated(FedArrays({"w": np.zeros(2)}), ["http://127.0.0.1:9"], poll=2).poll == 2.0
