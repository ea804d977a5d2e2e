"""FedAvg rounds of array models across real device processes."""

import re
import threading
import time

import numpy as np
import pytest

from fedsync import FedArrays, Federated, Remote
from tests.support.seed_fedfloat import FedFloat
from fedsync.wire.replies import ReplyStream
from fedsync.errors import FedSyncError, RemoteError, RoundFailed, SpecsMismatch, TrainingFailed
from tests.support.devices.basic import linear_regression_data


def coordinator_weights():
    return {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def test_merge_weighs_by_sample_count(devices):
    many = devices("constant", 1.0, 30)
    few = devices("constant", 4.0, 10)
    data = FedArrays(coordinator_weights())
    with Federated(data=data, remotes=[Remote(many.url), Remote(few.url)]) as alg:
        alg.round()
    # (1.0 * 30 + 4.0 * 10) / 40
    assert np.all(data.model["w"] == 1.75) and np.all(data.model["b"] == 1.75)
    assert data.last_merge["samples"] == 40
    assert data.last_merge["metrics"] == {"loss": 1.75}


@pytest.mark.slow  # over a second: the full suite (the fast tier stays under 90 s)
def test_linear_regression_fedavg_converges_to_centralized_solution(devices):
    shards = [(0, 40, -1.0), (1, 120, 0.0), (2, 300, 1.5)]  # different sizes and input distributions
    remotes = [Remote(devices("linreg", seed, n, shift).url) for seed, n, shift in shards]
    data = FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})
    with Federated(data=data, remotes=remotes) as alg:
        for _ in range(30):
            alg.round()
    x = np.vstack([linear_regression_data(seed, n, shift)[0] for seed, n, shift in shards])
    y = np.vstack([linear_regression_data(seed, n, shift)[1] for seed, n, shift in shards])
    solution, *_ = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)
    np.testing.assert_allclose(data.model["w"], solution[:3], atol=0.02)
    np.testing.assert_allclose(data.model["b"], solution[3], atol=0.02)
    assert data.last_merge["samples"] == 460


def test_specs_mismatch_names_device_and_both_specs_before_sending(devices):
    device = devices("constant", 1.0, 5)
    wrong = FedArrays({"w": np.zeros((3, 3), np.float32), "b": np.zeros(2, np.float32)})
    with Federated(data=wrong, remotes=[device.url]) as alg:
        with pytest.raises(SpecsMismatch) as caught:
            alg.round()
    message = str(caught.value)
    assert device.url in message
    assert wrong.specs(1) in message and FedArrays(coordinator_weights()).specs(1) in message
    assert "w: expected (3, 3) float32, device has (3, 2) float32" in message
    # Nothing was sent: the device is still waiting for its first repetition.
    assert Remote(device.url).info()["repetition"] == 0


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_killed_device_is_named_within_timeout(devices):
    alive = devices("slow", 0.0)
    doomed = devices("slow", 3.0)
    data = FedArrays({"w": np.ones(4, np.float32)})
    alg = Federated(data=data, remotes=[alive.url, doomed.url], timeout=20)
    started = time.monotonic()
    threading.Timer(1.0, doomed.kill).start()  # mid-training
    with alg, pytest.raises(RoundFailed) as caught:
        alg.round()
    assert time.monotonic() - started < 20
    # Named because it went away, not because the round waited out its timeout.
    assert caught.value.failures[doomed.url].startswith("RemoteUnavailable: "), caught.value.failures
    assert alive.url not in caught.value.failures
    assert np.all(data.model["w"] == 1.0)


@pytest.mark.slow  # waits out a 4 s round: the full suite runs it (fast tier budget)
def test_frozen_device_is_named_at_the_deadline(devices):
    alive = devices("slow", 0.0)
    frozen = devices("slow", 0.0)
    frozen.stop()
    data = FedArrays({"w": np.ones(4, np.float32)})
    started = time.monotonic()
    with Federated(data=data, remotes=[Remote(alive.url, timeout=2), Remote(frozen.url, timeout=2)], timeout=4) as alg:
        with pytest.raises(RoundFailed) as caught:
            alg.round()
    elapsed = time.monotonic() - started
    assert elapsed < 4 + 3
    assert list(caught.value.failures) == [frozen.url]
    # The handshake waits min(Remote.timeout, half the round's time left): just under 2 s here.
    reason = re.fullmatch(r"RemoteTimeout: did not answer the handshake within ([0-9.]+)s", caught.value.failures[frozen.url])
    assert reason is not None, caught.value.failures[frozen.url]
    assert 1.5 <= float(reason.group(1)) <= 2
    assert frozen.url in str(caught.value)
    assert np.all(data.model["w"] == 1.0)


@pytest.mark.slow
def test_device_frozen_mid_training_is_named_at_the_deadline(devices):
    frozen = devices("slow", 2.0)
    data = FedArrays({"w": np.ones(4, np.float32)})
    threading.Timer(0.5, frozen.stop).start()  # after submission, while it trains
    started = time.monotonic()
    with Federated(data=data, remotes=[Remote(frozen.url, timeout=30)], timeout=5) as alg:
        with pytest.raises(RoundFailed) as caught:
            alg.round()
    assert time.monotonic() - started < 5 + 3
    # The long-poll's read timeout is cut to the round's deadline: a timeout, not a lost connection.
    assert caught.value.failures[frozen.url].startswith("RemoteTimeout: timed out"), caught.value.failures
    assert np.all(data.model["w"] == 1.0)


def test_training_error_reaches_coordinator_and_next_round_works(devices):
    device = devices("flaky", 1)
    data = FedArrays({"w": np.zeros(4, np.float32)})
    with Federated(data=data, remotes=[device.url], timeout=30) as alg:
        with pytest.raises(RoundFailed) as caught:
            alg.round()
        assert "RuntimeError: disk full on device" in caught.value.failures[device.url]
        assert str(caught.value).startswith("round 1 failed: 0 of 1 required devices answered;"), str(caught.value)
        assert str(caught.value).count(device.url) == 1, str(caught.value)  # each failure listed once
        assert "TrainingFailed" in caught.value.failures[device.url]
        assert np.all(data.model["w"] == 0.0)
        assert Remote(device.url).info()["state"] == "failed"
        result = alg.round()
    assert result.answered == [device.url]
    assert np.all(data.model["w"] == 5.0)


def test_result_of_failed_training_is_500_with_the_device_message(devices):
    device = devices("flaky", 1)
    data = FedArrays({"w": np.zeros(4, np.float32)})
    with Remote(device.url) as remote:
        remote.submit(1, data.serialize(1), data.specs(1))
        with pytest.raises(TrainingFailed, match="disk full on device") as caught:
            remote.result(1, wait=10)
    assert isinstance(caught.value, FedSyncError) and isinstance(caught.value, RemoteError)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_minimum_results_merge_without_a_dead_device(devices):
    alive = devices("constant", 2.0, 3)
    dead = devices("constant", 9.0, 3)
    dead.kill()
    data = FedArrays(coordinator_weights())
    with Federated(data=data, remotes=[alive.url, dead.url], min_results=1, timeout=10) as alg:
        result = alg.round()
    assert result.answered == [alive.url]
    assert "RemoteUnavailable" in result.failures[dead.url]
    assert np.all(data.model["w"] == 2.0)


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_coordinator_holds_at_most_downloads_replies_at_once(devices):
    downloaded = []
    lock = threading.Lock()

    class CountingRemote(Remote):
        def download(self, stream, **kwargs):  # a round reads every whole reply through download
            reply = super().download(stream, **kwargs)
            with lock:
                downloaded.append(self.url)
            return reply

    class SlowMerge(FedFloat):
        held = []

        def merge(self, encodings, repetition):
            values = []
            for consumed, encoding in enumerate(encodings):
                time.sleep(0.2)  # a slow fold: replies must not pile up meanwhile
                with lock:
                    self.held.append(len(downloaded) - consumed)
                values.append(float(encoding))
            self.value = sum(values) / len(values)

    urls = [devices("fedfloat", float(v)).url for v in range(4)]
    data = SlowMerge(0.0)
    with Federated(data=data, remotes=[CountingRemote(u) for u in urls], downloads=1) as alg:
        alg.round()
    assert data.value == 1.5
    assert len(SlowMerge.held) == 4 and max(SlowMerge.held) == 1


def test_array_replies_arrive_as_streams_and_other_replies_as_text(devices):
    seen = {}

    class Recording(FedArrays):
        def merge(self, encodings, repetition):
            def recorded():
                for encoding in encodings:  # each stream is read before the next is asked for
                    seen.setdefault("types", set()).add(type(encoding))
                    yield encoding

            super().merge(recorded(), repetition)

    class TextFloat(FedFloat):
        def merge(self, encodings, repetition):
            encodings = list(encodings)
            seen["float"] = {type(e) for e in encodings}
            super().merge(encodings, repetition)

    device = devices("constant", 1.0, 3)
    data = Recording(coordinator_weights())
    with Federated(data=data, remotes=[device.url]) as alg:
        alg.round()
    assert seen["types"] == {ReplyStream}  # FedArrays.accepts_streams
    assert np.all(data.model["w"] == 1.0)
    text = devices("fedfloat", 2.0)
    with Federated(data=TextFloat(0.0), remotes=[text.url]) as alg:
        alg.round()
    assert seen["float"] == {str}
