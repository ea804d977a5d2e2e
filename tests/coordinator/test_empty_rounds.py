"""Empty rounds are a policy (issue #23, item 2): every device reports 0 samples.

``empty_rounds="fail"`` (the default) raises :class:`~fedsync.errors.EmptyRound`, a ``RoundFailed``
whose message says what happened and names the option, without blaming ``train``; ``"keep"``
keeps the model, records the round as empty (and the history's JSON keeps it) and goes on.
The same for every kind of strategy: the streaming ones (FedAvg, a server optimizer) and those
that need every reply (FedMedian, FedTrimmedAvg).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays, FedAvg, Federated, History, RoundResult
from fedsync.coordinator.simulation import run_simulation
from fedsync.errors import EmptyRound, RoundFailed
from fedsync.strategies import FedAvgM, FedMedian, FedTrimmedAvg
from tests.support.devices.research import straggler

STRATEGIES = [FedAvg, lambda: FedAvgM(server_momentum=0.9), FedMedian, lambda: FedTrimmedAvg(beta=0.2)]


def model(strategy=None) -> FedArrays:
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)}, strategy=strategy)


def drop_in_round_2(server_round):
    """Every device drops its work in round 2, as stragglers told to stop do."""
    return {"drop": server_round == 2}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keep_records_the_empty_round_leaves_the_model_and_goes_on(strategy):
    weights = []
    data = model(strategy())
    history = run_simulation(
        straggler, 4, 3, data=data, config=drop_in_round_2, empty_rounds="keep", workers=2, progress=False,
        callbacks=[lambda federated, result: weights.append({k: a.copy() for k, a in federated.data.get_arrays().items()})],
    )  # fmt: skip
    assert [r.empty for r in history] == [False, True, False]
    empty = history[1]
    assert empty.samples == 0 and empty.metrics == {} and not empty.failures
    assert sorted(empty.answered) == [f"local://device-{i}" for i in range(4)]
    assert [row["samples"] for row in empty.devices.values()] == [0, 0, 0, 0]
    for name in weights[0]:
        np.testing.assert_array_equal(weights[1][name], weights[0][name])  # the empty round kept the model
    assert not np.array_equal(weights[2]["w"], weights[1]["w"])  # and the next round trained on
    assert history[2].samples == 160
    again = History.from_json(history.to_json())
    assert [r.empty for r in again] == [False, True, False] and again[1].samples == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fail_raises_empty_round_without_blaming_train_and_changes_nothing(strategy):
    data = model(strategy())
    with pytest.raises(EmptyRound) as caught:
        run_simulation(straggler, 3, 3, data=data, config=drop_in_round_2, workers=2, progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, RoundFailed)
    assert message.startswith("round 2: every device that answered (3) reported 0 samples"), message
    assert "empty_rounds='keep'" in message and "must return" not in message


def test_a_round_with_some_samples_is_no_empty_round():
    history = run_simulation(
        straggler, 4, 1, data=model(), config=lambda rnd, device: {"drop": not device.endswith("-0")},
        empty_rounds="keep", workers=2, progress=False,
    )  # fmt: skip
    assert not history[0].empty and history[0].samples == 40 and len(history[0].answered) == 4


def test_both_policies_over_http(devices):
    urls = [devices("tests.support.devices.basic:constant", 1.0, 0).url for _ in range(2)]
    data = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    with Federated(data, urls, empty_rounds="keep") as alg:
        result = alg.round()
        assert result.empty and result.samples == 0 and sorted(result.devices) == sorted(urls)
        assert len(alg.history) == 1 and alg.repetition == 1
        np.testing.assert_array_equal(data.get_arrays()["w"], 0.0)
    with Federated(data, urls) as alg:
        with pytest.raises(EmptyRound, match=r"reported 0 samples.*empty_rounds='keep'"):
            alg.round()
        assert len(alg.history) == 0


def test_the_policy_is_checked_and_the_history_refuses_a_bad_flag():
    with pytest.raises(ValueError, match="empty_rounds must be 'fail' or 'keep'"):
        Federated(model(), ["http://127.0.0.1:9"], empty_rounds="skip")
    with pytest.raises(ValueError, match="empty must be true or false"):
        RoundResult.from_dict({"repetition": 1, "empty": "yes"})
    assert RoundResult.from_dict({"repetition": 1}).empty is False  # a history written before the field


def failing_in_round_2(device_id: int) -> FedArrays:
    """A device whose train raises in round 2 when it is device 0 or 1: the round falls below its quorum."""
    calls = {"n": 0}

    def train(arrays, config):
        calls["n"] += 1
        if config.get("fail") and device_id < 2:
            raise RuntimeError("the device's disk is full")
        arrays["w"] += 1.0
        return 10

    return FedArrays({"w": np.zeros(2)}, train)


def fail_in_round_2(server_round):
    return {"fail": server_round == 2}


def test_below_the_quorum_keep_records_an_empty_round_with_who_failed_and_goes_on():
    from fedsync.errors import BelowQuorum

    data = FedArrays({"w": np.zeros(2)})
    history = run_simulation(
        failing_in_round_2, 4, 3, data=data, config=fail_in_round_2, min_results=3, empty_rounds="keep",
        progress=False,
    )  # fmt: skip
    assert [r.empty for r in history] == [False, True, False]
    # 0 and 1 failed; 2 and 3, still working when the quorum went out of reach, may be named too
    assert {"local://device-0", "local://device-1"} <= set(history[1].failures)
    assert "disk is full" in history[1].failures["local://device-0"]
    assert history[1].samples == 0 and history[1].devices == {}
    np.testing.assert_array_equal(data.model["w"], [2.0, 2.0])  # rounds 1 and 3 merged, round 2 kept the model
    with pytest.raises(BelowQuorum, match=r"[0-2] of 3 required devices answered"):  # how many before it gave up
        run_simulation(
            failing_in_round_2, 4, 3, data=FedArrays({"w": np.zeros(2)}), config=fail_in_round_2, min_results=3,
            progress=False,
        )  # fmt: skip


def test_below_the_quorum_at_the_handshake_keep_records_an_empty_round_too():
    from fedsync.transports.local import LocalRemote

    def gone():
        raise RuntimeError("this device was never built")

    remotes = [LocalRemote("local://ok", device=lambda: failing_in_round_2(3)), LocalRemote("local://gone", device=gone)]
    data = FedArrays({"w": np.zeros(2)})
    with Federated(data, remotes, min_results=2, empty_rounds="keep", timeout=30) as alg:
        result = alg.round()
    assert result.empty and "local://gone" in result.failures
    np.testing.assert_array_equal(data.model["w"], [0.0, 0.0])
