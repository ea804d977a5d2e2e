"""The seed README's API, as written, across real device processes."""

import pytest

import fedsync
import fedsync.client
from fedsync.client import Federated, Remote
from fedsync.data import FIRST, FedData
from tests.support.seed_fedfloat import FedFloat


def test_public_names():
    assert FIRST == 1
    assert fedsync.FIRST == FIRST
    assert fedsync.FedData is FedData
    assert fedsync.Federated is Federated and fedsync.Remote is Remote
    assert fedsync.client.__all__ == ["Federated", "Remote"]  # the seed's path, not a second home for the rest
    assert fedsync.serve is fedsync.device.serving.serve


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_fedfloat_seed_example_over_http(devices):
    one = devices("fedfloat", 1.0)
    three = devices("fedfloat", 3.0)
    alg = Federated(data=FedFloat(10.0), remotes=[Remote(one.url), Remote(three.url)])
    with alg:
        first = alg.round()
        # On FIRST devices keep their own values: the average of 1 and 3.
        assert alg.data.value == 2.0
        assert first.repetition == FIRST
        assert sorted(first.answered) == sorted([one.url, three.url])
        assert first.failures == {}
        second = alg.round()
        assert second.repetition == FIRST + 1
        assert alg.data.value == 2.0


def test_restarted_coordinator_continues_above_device_repetitions(devices):
    device = devices("fedfloat", 4.0)
    with Federated(data=FedFloat(0.0), remotes=[device.url]) as alg:
        alg.round()
        alg.round()
    with Federated(data=FedFloat(8.0), remotes=[device.url]) as again:
        result = again.round()
    assert result.repetition == 3
    # Not FIRST any more: the device took the new coordinator's 8.0 and sent it back.
    assert again.data.value == 8.0
