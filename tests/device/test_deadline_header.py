"""X-Fedsync-Deadline (#21): the seconds left in the coordinator's round, sent with every submission and evaluation.

A device checks it like every header a peer sends: anything but a plain decimal number of seconds in
[0, 10,000,000] is ``400 bad_deadline`` with the cause, before the body is read, and changes nothing. A device
ignores a good one; an aggregator ends its round below within it (tests/aggregator).
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

import fedsync
from fedsync import FedArrays, Federated, Remote
from fedsync.wire import codec
from fedsync.wire.transfer import STALL, parse_deadline, round_grace, within_parent


def device() -> FedArrays:
    return FedArrays({"w": np.zeros(2, np.float32)}, lambda m: 1, evaluate=lambda m: (1, {}))


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", "inf", "nan", "1.2.3", "99999999999", "", "0x10", "1_0"])
@pytest.mark.parametrize("route", ["submit", "evaluate"])
def test_a_bad_deadline_is_refused_before_the_body_and_changes_nothing(value, route):
    data = device()
    payload = bytes(codec.encode_payload(data.get_arrays(), {"fedsync.samples": "0"}))
    with fedsync.serve(data, port=0, block=False) as served:
        answer = requests.post(
            f"{served.url}/1/{route}",
            data=payload,
            headers={"X-Fedsync-Specs": data.specs(1), "X-Fedsync-Deadline": value},
            timeout=10,
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "bad_deadline" and "X-Fedsync-Deadline" in answer.json()["message"]
        assert Remote(served.url).info()["repetition"] == 0 and Remote(served.url).info()["state"] == "idle"


def test_the_coordinator_sends_the_time_left_and_a_plain_device_ignores_it():
    with fedsync.serve(device(), port=0, block=False) as served:
        with Federated(FedArrays({"w": np.zeros(2, np.float32)}), [served.url], timeout=30) as alg:
            assert alg.round().failures == {}
            assert alg.evaluate().failures == {}


def test_parsing_and_the_time_a_round_below_gets():
    assert parse_deadline("12.5") == 12.5 and parse_deadline("0") == 0.0 and parse_deadline(" 7 ") == 7.0
    assert within_parent(300.0, None) == 300.0
    assert within_parent(300.0, 60.0) == pytest.approx(60.0 - round_grace(60.0) - STALL - 0.5)
    assert within_parent(5.0, 60.0) == 5.0  # its own timeout when that is shorter
    assert within_parent(300.0, 1.0) == 0.0  # nothing left: the aggregator fails at once, naming why
