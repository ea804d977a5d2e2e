"""Rounds that survive real devices: sampling, quorum, deadlines, devices coming and going."""

import re
import time

import numpy as np
import pytest
import requests

from fedsync import FedArrays, Federated, Remote
from fedsync.errors import RoundFailed
from tests.support.seed_fedfloat import FedFloat


def weights():
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def wait_until_idle(url, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if requests.get(url + "/info", timeout=5).json()["state"] != "training":
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} still training after {seconds}s")


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_quorum_met_with_one_device_killed(devices):
    a, b, c = (devices("constant", v, 10) for v in (1.0, 2.0, 6.0))
    data = weights()
    with Federated(data=data, remotes=[a.url, b.url, c.url], min_results=2, timeout=20) as alg:
        alg.round()
        c.kill()
        result = alg.round()
    assert sorted(result.answered) == sorted([a.url, b.url])
    assert list(result.failures) == [c.url]
    assert np.all(data.model["w"] == 1.5)


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_quorum_missed_lists_every_device_and_keeps_the_model(devices):
    a, b, c = (devices("constant", v, 10) for v in (1.0, 2.0, 6.0))
    data = weights()
    with Federated(data=data, remotes=[a.url, b.url, c.url], min_results=3, timeout=20) as alg:
        alg.round()
        before = {k: v.copy() for k, v in data.get_arrays().items()}
        b.kill()
        c.kill()
        with pytest.raises(RoundFailed) as caught:
            alg.round()
    assert set(caught.value.failures) == {b.url, c.url}
    assert all("RemoteUnavailable" in why for why in caught.value.failures.values())
    assert b.url in str(caught.value) and c.url in str(caught.value)
    for name, array in data.get_arrays().items():
        np.testing.assert_array_equal(array, before[name])
    assert len(alg.history) == 1


@pytest.mark.slow  # a few seconds of real waiting: the full suite runs it (fast tier: 90 s budget)
def test_frozen_device_misses_the_deadline_and_the_quorum_still_merges(devices):
    alive = devices("constant", 3.0, 5)
    frozen = devices("constant", 9.0, 5)
    data = weights()
    with Federated(data=data, remotes=[alive.url, Remote(frozen.url, timeout=30)], min_results=1, timeout=3) as alg:
        alg.round()  # both known
        frozen.stop()
        started = time.monotonic()
        result = alg.round()
        elapsed = time.monotonic() - started
    assert elapsed < 3 + 3  # the timeout plus a small bounded margin
    assert result.answered == [alive.url]
    # The reason names the wait it had: the round's time left when its turn came, at most the 3 s timeout.
    reason = re.fullmatch(r"RemoteTimeout: did not accept the payload within ([0-9.]+)s", result.failures[frozen.url])
    assert reason is not None, result.failures[frozen.url]
    assert 2 <= float(reason.group(1)) <= 3
    assert np.all(data.model["w"] == 3.0)


@pytest.mark.slow
def test_late_result_is_dropped_and_the_late_device_rejoins(devices):
    fast = devices("slow_first", 0.0, 2.0)
    late = devices("slow_first", 4.0, 8.0)
    data = FedArrays({"w": np.zeros(4, np.float32)})
    with Federated(data=data, remotes=[fast.url, late.url], min_results=1, timeout=1.5) as alg:
        first = alg.round()
        assert first.answered == [fast.url] and late.url in first.failures
        assert np.all(data.model["w"] == 2.0)  # the late device's 8.0 was not merged
        second = alg.round()  # still training: skipped as busy, not waited on
        assert "busy" in second.failures[late.url].lower()
        wait_until_idle(late.url)
        third = alg.round()
    assert sorted(third.answered) == sorted([fast.url, late.url])
    assert np.all(data.model["w"] == 5.0)


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_device_restarted_mid_run_rejoins_at_the_next_round(devices):
    steady = devices("constant", 1.0, 10)
    flaky = devices("constant", 3.0, 10)
    port = int(flaky.url.rsplit(":", 1)[1])
    data = weights()
    with Federated(data=data, remotes=[steady.url, flaky.url], min_results=1, timeout=20) as alg:
        assert len(alg.round().answered) == 2
        flaky.kill()
        assert alg.round().answered == [steady.url]
        restarted = devices("constant", 3.0, 10, port=port)
        assert restarted.url == flaky.url
        result = alg.round()
    assert sorted(result.answered) == sorted([steady.url, flaky.url])
    assert np.all(data.model["w"] == 2.0)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_sampling_is_reproducible_with_a_seed(devices):
    urls = [devices("fedfloat", float(i)).url for i in range(4)]
    runs = []
    for _ in range(2):
        with Federated(data=FedFloat(0.0), remotes=urls, fraction=0.5, seed=7) as alg:
            runs.append([sorted(alg.round().answered) for _ in range(4)])
    assert runs[0] == runs[1]
    assert all(len(r) == 2 for r in runs[0])
    assert len({tuple(r) for r in runs[0]}) > 1  # different devices in different rounds
    other = Federated(data=FedFloat(0.0), remotes=urls, fraction=0.5, seed=8)
    assert [other.sample() for _ in range(4)] != [Federated(data=FedFloat(0.0), remotes=urls, fraction=0.5, seed=7).sample() for _ in range(4)]


def test_every_round_is_logged_at_info(devices, caplog):
    device = devices("constant", 1.0, 4)
    caplog.set_level("INFO", logger="fedsync")
    with Federated(data=weights(), remotes=[device.url]) as alg:
        alg.round()
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsync"]
    assert any(line.startswith("round 1: 1 device(s), 0 failed, 4 samples") for line in lines)
