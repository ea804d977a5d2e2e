"""Replies fold into the coordinator's sum while they download; a bad one is dropped, not merged.

The coordinator never holds a whole reply (see ``FedData.accepts_streams``): it
checks each piece as it folds it. A reply found bad after part of it was folded
(NaN at its end, a device dying mid-answer) is dropped, and the sum is started
over from the replies kept so far, which their devices send again.
"""

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.wire import codec
from fedsync.errors import RoundFailed
from tests.support.devices.basic import big_model


@pytest.mark.parametrize(
    "spoil, reason",
    [
        ("nan", "array 'last' contains NaN or infinity"),
        pytest.param("nan-first", "array 'big' contains NaN or infinity", marks=pytest.mark.slow),
        pytest.param("cut", "RemoteUnavailable", marks=pytest.mark.slow),
    ],
)
@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_reply_found_bad_while_it_streams_is_dropped_and_the_others_merge_exactly(devices, spoil, reason):
    good = [devices("tests.support.devices.basic:big_constant", 1.0, 10), devices("tests.support.devices.basic:big_constant", 3.0, 30)]
    # Slower, so the good replies are folded first; 1000 samples: any of it left in the sum shows.
    bad = devices("tests.support.devices.basic:big_constant", 100.0, 1000, 1.0, spoil)
    data = FedArrays(big_model())
    with Federated(data=data, remotes=[d.url for d in [*good, bad]], min_results=2) as alg:
        result = alg.round()
    assert sorted(result.answered) == sorted(d.url for d in good)
    assert list(result.failures) == [bad.url]
    assert reason in result.failures[bad.url]
    assert np.all(data.model["big"] == 2.5) and np.all(data.model["last"] == 2.5)  # (1*10 + 3*30) / 40
    assert result.samples == 40


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_rejections_that_break_the_quorum_fail_the_round_and_keep_the_model(devices):
    good = devices("tests.support.devices.basic:big_constant", 1.0, 10)
    bad = devices("tests.support.devices.basic:big_constant", 100.0, 1000, 0.5, "nan")
    data = FedArrays(big_model())
    with Federated(data=data, remotes=[good.url, bad.url]) as alg:
        with pytest.raises(RoundFailed) as failed:
            alg.round()
    assert "NaN" in failed.value.failures[bad.url]
    assert np.all(data.model["big"] == 0.0) and np.all(data.model["last"] == 0.0)


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_a_kept_reply_that_fails_when_read_again_is_dropped_too_and_the_sum_restarts(devices):
    """The restart path: a spoiled reply forces the kept ones to be read again, and one of those fails then."""
    fickle = devices("tests.support.devices.basic:cut_when_read_again", 1.0, 10)
    steady = devices("tests.support.devices.basic:big_constant", 3.0, 30)
    # Slower, so the other two are folded (and kept) before it spoils the sum.
    spoiled = devices("tests.support.devices.basic:big_constant", 100.0, 1000, 1.0, "nan")
    data = FedArrays(big_model())
    with Federated(data=data, remotes=[fickle.url, steady.url, spoiled.url], min_results=1) as alg:
        result = alg.round()
    assert result.answered == [steady.url]
    assert sorted(result.failures) == sorted([fickle.url, spoiled.url])
    assert result.failures[fickle.url].startswith("PayloadRejected: reply rejected: when read again: Remote"), result.failures
    assert "NaN" in result.failures[spoiled.url]
    assert np.all(data.model["big"] == 3.0) and np.all(data.model["last"] == 3.0)  # the steady device's alone
    assert result.samples == 30


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_reopen_refuses_a_result_of_another_length(devices):
    """A device that sends a result again must send the same bytes: another length is refused, not read."""
    import requests

    from fedsync.errors import RemoteError
    from fedsync.transports.http import HTTPAnswer
    from fedsync.wire.replies import ReplyStream
    from fedsync.wire.transfer import Deadline

    first, other = devices("constant", 1.0, 3), devices("slow", 0.0)  # same repetition, other sizes of result
    for device, model in ((first, {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}), (other, {"w": np.zeros(4, np.float32)})):
        fed = FedArrays(model)
        assert requests.post(f"{device.url}/1/submit", data=bytes(fed.serialize(1)), headers={"X-Fedsync-Specs": fed.specs(1)}, timeout=30).status_code == 202

    def get(url):
        response = requests.get(f"{url}/1/result", params={"wait": "30"}, stream=True, timeout=60)
        assert response.status_code == 200
        return HTTPAnswer(response, url), int(response.headers["Content-Length"])

    stream = ReplyStream(first.url, get(first.url), lambda: get(other.url), Deadline.within(60))  # "the device" restarted as another
    whole = stream.read_all()
    assert len(whole) == len(stream)
    with pytest.raises(RemoteError, match=rf"sent {get(other.url)[1]} bytes for a result it sent as {len(stream)} before") as caught:
        stream.reopen()
    assert caught.value.url == first.url


def test_open_result_without_a_deadline_reads_the_whole_result(devices):
    """Its default deadline is finite: an infinite one made every read fail (OverflowError, found by this test)."""
    import requests

    from fedsync import Remote

    device = devices("constant", 1.0, 3)
    fed = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    assert requests.post(f"{device.url}/1/submit", data=bytes(fed.serialize(1)), headers={"X-Fedsync-Specs": fed.specs(1)}, timeout=30).status_code == 202
    with Remote(device.url) as remote:
        stream = remote.open_result(1, 30)
        try:
            body = stream.read_all()
        finally:
            stream.close()
    arrays, _ = codec.decode(bytes(body))
    assert np.all(arrays["w"] == 1.0) and np.all(arrays["b"] == 1.0)
