"""Secure aggregation (issue #13 part 3): real device processes over real HTTP, and the phases' refusals."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

pytest.importorskip("cryptography")
pytest.importorskip("Crypto")

import fedsync  # noqa: E402
from fedsync import FedArrays, Federated, Remote
from fedsync.wire import codec  # noqa: E402
from fedsync.errors import RoundFailed  # noqa: E402
from fedsync.secagg import SecAgg  # noqa: E402
from fedsync.secagg import shamir  # noqa: E402
from fedsync.strategies import FedMedian  # noqa: E402
from tests.support.devices.secagg import model, noisy, update  # noqa: E402
from tests.support.secagg import assert_within_quantization, fedavg, keys_body, post, submit_and_wait  # noqa: E402

D = "tests.support.devices.secagg:"


@pytest.mark.slow  # three device processes (about 4 s); the fast tier runs secure rounds in-process and over in-process HTTP
def test_secure_round_equals_fedavg_and_a_masked_reply_looks_uniform(devices):
    """Three device processes: plain FedAvg, then a secure round from the same global weights."""
    started = [devices(D + "noisy", 1, 10), devices(D + "noisy", 2, 30), devices(D + "constant", 0.25, 7)]
    urls = [d.url for d in started]
    plain = FedArrays(model())
    Federated(plain, urls, timeout=30).round()
    scale = 2**12  # coarse, so the quantization error is visible and bounded
    secure = FedArrays(model())
    with Federated(secure, urls, timeout=30, secure_aggregation=SecAgg(scale=scale)) as alg:
        result = alg.round()
    assert result.samples == 47 and result.metrics == {} and result.devices == {}  # nor per-device counts nor metrics
    assert_within_quantization(secure.model, plain.model, scale)
    assert not np.array_equal(secure.model["w"], plain.model["w"])  # quantized, so not bit-equal: the masked path ran
    # What the coordinator downloaded from the constant device: its reply, read again.
    body = requests.get(f"{urls[2]}/{result.repetition}/result", timeout=10).content
    arrays, metadata = codec.decode(body)
    assert list(arrays) == ["secagg"] and metadata == {"fedsync.secagg": "v2"} and arrays["secagg"].dtype == np.uint64
    # Unmasked, every element of the constant device's update would be the same; masked, the
    # top 4 bits must look uniform: chi-square, 15 degrees of freedom, refused at p = 1e-6.
    from scipy.stats import chi2

    counts = np.bincount((arrays["secagg"] >> np.uint64(60)).astype(np.int64), minlength=16)
    expected = arrays["secagg"].size / 16
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(1 - 1e-6, 15), f"masked reply is not uniform: chi-square {statistic:.1f}"


def _five(devices, killed: int):
    started = [devices(D + "noisy", seed, 10 * seed) for seed in range(1, 6 - killed)]
    started += [devices(D + "killed", 9, 5) for _ in range(killed)]
    return started


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 2])
def test_devices_killed_after_the_share_phase_leave_the_survivors_exact_sum(devices, killed):
    started = _five(devices, killed)
    data = FedArrays(model())
    scale = 2**16
    with Federated(data, [d.url for d in started], timeout=30, min_results=3, secure_aggregation=SecAgg(threshold=3, scale=scale)) as alg:
        result = alg.round()
    assert sorted(result.failures) == sorted(d.url for d in started[5 - killed :])
    assert result.samples == sum(10 * s for s in range(1, 6 - killed))
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in range(1, 6 - killed)]), scale)


@pytest.mark.slow
def test_a_device_still_training_at_the_deadline_leaves_the_unmask_phase_its_grace(devices):
    """Collection ends at the round's deadline (one device never answers); the survivors still unmask."""
    started = [devices(D + "noisy", seed, 10 * seed) for seed in (1, 2, 3)] + [devices(D + "hung", 9, 5)]
    data = FedArrays(model())
    scale = 2**16
    with Federated(data, [d.url for d in started], timeout=20, min_results=3, secure_aggregation=SecAgg(scale=scale)) as alg:
        result = alg.round()  # timeout 20 s: the unmask phase gets round_grace(20) = 2 s past the deadline
    assert list(result.failures) == [started[3].url] and "RemoteTimeout" in result.failures[started[3].url]
    assert result.samples == 60
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (1, 2, 3)]), scale)


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 2])
def test_devices_killed_after_masking_are_in_the_sum_rebuilt_from_the_others_shares(devices, killed):
    """Their masked updates arrived, then they died: their self masks are rebuilt from t survivors' shares."""
    started = [devices(D + "slow_noisy", seed, 10 * seed) for seed in range(1, 6 - killed)]
    started += [devices(D + "killed_after_masking", seed, 10 * seed) for seed in range(6 - killed, 6)]
    data = FedArrays(model())
    scale = 2**16
    with Federated(data, [d.url for d in started], timeout=30, min_results=3, secure_aggregation=SecAgg(threshold=3, scale=scale)) as alg:
        result = alg.round()
    assert sorted(result.answered) == sorted(d.url for d in started)  # every masked update is in the sum
    for d in started[5 - killed :]:
        assert d.process.poll() is not None  # dead before the unmask phase, which they could not answer
    assert result.samples == sum(10 * s for s in range(1, 6))
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in range(1, 6)]), scale)


@pytest.mark.slow
def test_fewer_survivors_than_the_threshold_fail_the_round_and_change_nothing(devices):
    started = _five(devices, 3)
    data = FedArrays(model())
    with Federated(data, [d.url for d in started], timeout=30, min_results=2, secure_aggregation=SecAgg(threshold=3)) as alg:
        with pytest.raises(RoundFailed) as raised:
            alg.round()
    assert "fewer than the threshold 3" in str(raised.value)
    assert all(d.url in str(raised.value) for d in started[2:])  # the dropped are named
    assert all((a == 0).all() for a in data.model.values())


@pytest.mark.slow
def test_a_device_revealing_false_shares_is_detected(devices):
    honest = [devices(D + "noisy", seed, 10 * seed) for seed in (1, 2, 3)]
    lying = devices(D + "liar", 4, 40)
    data = FedArrays(model())
    scale = 2**16
    with Federated(data, [d.url for d in [lying, *honest]], timeout=30, secure_aggregation=SecAgg(threshold=3, scale=scale)) as alg:
        result = alg.round()
    assert list(result.failures) == [lying.url] and "SecAggFalseShare" in result.failures[lying.url]
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (1, 2, 3, 4)]), scale)
    # With only t honest devices left besides the liar, no t shares rebuild the secrets: a clear failure.
    with Federated(data, [lying.url, honest[0].url, honest[1].url], timeout=30, secure_aggregation=SecAgg(threshold=3)) as alg:
        before = {k: v.copy() for k, v in data.model.items()}
        with pytest.raises(RoundFailed, match="cannot rebuild device"):
            alg.round()
    assert all(np.array_equal(before[k], data.model[k]) for k in before)


# -- in-process devices over real HTTP: the phases' rules -----------------------------------------------


def run_phases(urls: list[str], rep: int, threshold: int = 3) -> None:
    """The coordinator's keys, shares and inbox phases, by hand."""
    answers = {i + 1: post(u, rep, "keys", keys_body(i + 1, len(urls), threshold)).json() for i, u in enumerate(urls)}
    table = {str(i): {"c": a["c"], "s": a["s"]} for i, a in answers.items()}
    sent = {i + 1: post(u, rep, "shares", {"keys": table}).json()["shares"] for i, u in enumerate(urls)}
    ids = list(range(1, len(urls) + 1))
    for i, u in enumerate(urls, 1):
        response = post(u, rep, "inbox", {"participants": ids, "shares": {str(v): sent[v][str(i)] for v in ids if v != i}})
        assert response.status_code == 200, response.text


def test_a_device_never_reveals_both_shares_of_one_peer(served):
    urls = [served(noisy(seed, 5)) for seed in (1, 2, 3, 4)]
    run_phases(urls, 1)
    coordinator = FedArrays(model())
    for url in urls:
        submit_and_wait(url, 1, coordinator)
    first = post(urls[0], 1, "unmask", {"survivors": [1, 2, 3, 4], "dropped": []})
    assert first.status_code == 200 and sorted(first.json()["b"]) == ["1", "2", "3", "4"]
    again = post(urls[0], 1, "unmask", {"survivors": [1, 2, 3], "dropped": [4]})  # now s_sk of 4 too: refused
    assert again.status_code == 409 and again.json()["error"] == "secagg_both_shares"
    alone = post(urls[1], 1, "unmask", {"survivors": [1, 2], "dropped": [3, 4]})  # below t: refused
    assert alone.status_code == 409 and alone.json()["error"] == "secagg_too_few"


HOSTILE_KEYS = [
    b"not json", b"[" * 100000, {"devices": 3}, {**keys_body(1), "id": 4}, {**keys_body(1), "threshold": 1}, {**keys_body(1), "threshold": 9},
    {**keys_body(1), "clip": -1}, {**keys_body(1), "clip": "1"}, {**keys_body(1), "devices": True},
    {**keys_body(1), "scale": 2**40, "max_samples": 2**30}, {**keys_body(1), "devices": 10**9}, {**keys_body(1), "extra": 1},
    # A coordinator's choices that would let it unmask one device: t <= n/2, or a sum of fewer than 3 devices.
    {**keys_body(1), "threshold": 2}, {**keys_body(1, devices=6), "threshold": 3}, keys_body(1, devices=2, threshold=2),
    # Numbers that overflow arithmetic (issue #22): refused as 400, never an OverflowError's 500.
    {**keys_body(1), "clip": 1e300}, {**keys_body(1), "clip": 10**400}, {**keys_body(1), "clip": 1.7e308},
    {**keys_body(1), "clip": True}, {**keys_body(1), "scale": 10**400}, {**keys_body(1), "max_samples": 10**400},
    {**keys_body(1), "devices": 10**400}, {**keys_body(1), "threshold": 10**400}, {**keys_body(1), "id": -(10**400)},
]


@pytest.mark.parametrize("body", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_hostile_keys_bodies_are_refused_and_change_nothing(served, body):
    url = served(noisy(1, 5))
    response = post(url, 1, "keys", body)
    assert response.status_code == 400 and response.json()["error"] == "secagg_malformed", response.text
    assert post(url, 1, "shares", {"keys": {}}).json()["error"] == "secagg_out_of_order"  # no session was made
    assert post(url, 1, "keys", keys_body(1)).status_code == 200  # and a good one still works


LOW_ORDER = base64.b64encode(bytes(32)).decode()  # the X25519 point 0: every secret agreed with it is 0


def test_hostile_later_phases_are_refused_and_change_nothing(served):
    urls = [served(noisy(seed, 5)) for seed in (1, 2, 3)]
    rep = 1
    a1, a2, a3 = (post(u, rep, "keys", keys_body(i, 3, 3)).json() for i, u in enumerate(urls, 1))
    table = {str(i): {"c": a["c"], "s": a["s"]} for i, a in enumerate((a1, a2, a3), 1)}
    bad_shares = [
        {"keys": {"1": table["1"], "2": table["2"]}},  # fewer than t
        {"keys": {**table, "1": {"c": a2["c"], "s": a1["s"]}}},  # our own keys swapped
        {"keys": {**table, "2": {"c": "%%%", "s": a2["s"]}}},  # not base64
        {"keys": {**table, "02": table["2"]}},  # not a canonical id
        {"keys": {**table, "2": {"c": a2["c"], "s": a2["s"], "x": 1}}},
        {"keys": {**table, "3": table["2"]}},  # another device's keys replayed
        {"keys": {**table, "3": {"c": a1["c"], "s": a3["s"]}}},  # our own c key given to a peer
        {"keys": {**table, "3": {"c": a3["c"], "s": LOW_ORDER}}},  # an s key no secret can be agreed with
        {"keys": {**table, "3": {"c": LOW_ORDER, "s": a3["s"]}}},
    ]
    for body in bad_shares:
        response = post(urls[0], rep, "shares", body)
        assert response.status_code == 400, (body, response.text)
    assert post(urls[0], rep, "inbox", {"participants": [1, 2, 3], "shares": {}}).status_code == 409  # before shares
    s1, s2, s3 = (post(u, rep, "shares", {"keys": table}).json()["shares"] for u in urls)
    # A share altered in transit (or meant for another device) does not decrypt: refused, nothing kept.
    tampered = base64.b64encode(bytes([base64.b64decode(s2["1"])[0] ^ 1]) + base64.b64decode(s2["1"])[1:]).decode()
    response = post(urls[0], rep, "inbox", {"participants": [1, 2, 3], "shares": {"2": tampered, "3": s3["1"]}})
    assert response.status_code == 400 and response.json()["error"] == "secagg_bad_share"
    assert post(urls[0], rep, "inbox", {"participants": [1, 2, 3, 4], "shares": {"2": s2["1"], "3": s3["1"]}}).status_code == 400
    assert post(urls[0], rep, "inbox", {"participants": [2, 3], "shares": {}}).status_code == 400  # not us
    assert post(urls[0], rep, "inbox", {"participants": [1, 2], "shares": {"2": s2["1"]}}).status_code == 409  # below t
    # Submitting before the inbox is refused: the device has shared its secrets, so it only answers masked.
    coordinator = FedArrays(model())
    with pytest.raises(fedsync.errors.RemoteError, match="secagg_out_of_order"):
        Remote(urls[0]).submit(rep, coordinator.serialize(rep), coordinator.specs(rep))
    assert post(urls[0], rep, "inbox", {"participants": [1, 2, 3], "shares": {"2": s2["1"], "3": s3["1"]}}).status_code == 200
    assert post(urls[0], rep, "unmask", {"survivors": [1, 2, 3], "dropped": []}).status_code == 409  # before its masked result
    too_big = requests.post(f"{urls[0]}/{rep}/secagg/unmask", data=b" " * (2 << 20), timeout=10)
    assert too_big.status_code == 413
    assert requests.post(f"{urls[0]}/{rep}/secagg/steal", data=b"{}", timeout=10).status_code == 404


def test_a_device_can_require_secure_aggregation(served):
    url = served(noisy(1, 5), secure_aggregation="required")
    others = [served(noisy(2, 15)), served(noisy(3, 10))]
    data = FedArrays(model())
    with pytest.raises(RoundFailed, match="secure_aggregation_required"):
        Federated(data, [url, *others], timeout=20).round()
    with Federated(data, [url, *others], timeout=20, secure_aggregation=SecAgg()) as alg:
        assert alg.round().samples == 30


def test_secure_rounds_run_in_process_over_local_transport():
    from fedsync.transports.local import register_device, unregister_device

    names = [f"secagg-{i}" for i in range(3)]
    urls = [register_device(name, noisy(seed, 10 * seed)) for name, seed in zip(names, (1, 2, 3))]
    try:
        data = FedArrays(model())
        with Federated(data, urls, timeout=30, secure_aggregation=SecAgg(scale=2**16)) as alg:
            assert alg.round().samples == 60
        assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (1, 2, 3)]), 2**16)
    finally:
        for name in names:
            unregister_device(name)


def test_strategies_that_need_each_update_are_refused():
    with pytest.raises(ValueError, match="FedMedian needs each device's own update"):
        Federated(FedArrays(model(), strategy=FedMedian()), ["http://127.0.0.1:9"], secure_aggregation=SecAgg())
    with pytest.raises(ValueError, match="wire_dtype"):
        Federated(FedArrays(model(), wire_dtype="float16"), ["http://127.0.0.1:9"], secure_aggregation=SecAgg())
    with pytest.raises(ValueError, match="overflow"):
        SecAgg(clip=1.0, scale=2**40, max_samples=2**30)


@pytest.mark.parametrize("options", [{"clip": 1e300}, {"clip": 10**400}, {"clip": 1.7e308}, {"clip": True},
                                     {"clip": float("nan")}, {"scale": 10**400}, {"max_samples": 10**400},
                                     {"threshold": 10**400}, {"scale": 2.0}])  # fmt: skip
def test_every_secagg_parameter_out_of_range_is_a_value_error(options):
    with pytest.raises(ValueError, match="must be|overflow"):
        SecAgg(**options)


def test_checked_reconstruction_names_a_false_share():
    import hashlib
    import os

    secret = os.urandom(32)
    shares = shamir.split(secret, 3, 5)
    shares[2] = bytes(32)
    found, false = shamir.recover(shares, 3, lambda s: hashlib.sha256(s).digest() == hashlib.sha256(secret).digest())
    assert found == secret and false == [2]
    with pytest.raises(shamir.Unrecoverable):
        shamir.recover({i: shares[i] for i in (1, 2, 3)}, 3, lambda s: s == secret)


def _lied(liars, n=12, t=7):
    import hashlib
    import os

    secret = os.urandom(32)
    shares = shamir.split(secret, t, n)
    for i in liars:
        shares[i] = os.urandom(32)
    commitment = hashlib.sha256(secret).digest()
    return secret, shares, lambda s: hashlib.sha256(s).digest() == commitment


def test_recovery_finds_the_honest_shares_whenever_threshold_of_them_remain():
    """12 devices, t = 7, five reveal random shares: the 7 honest ones are found (issue #22), not 1 in 792 tries."""
    secret, shares, check = _lied([6, 7, 8, 9, 10])
    assert shamir.recover(shares, 7, check) == (secret, [6, 7, 8, 9, 10])
    # Known liars (the coordinator's suspects from an earlier secret) are avoided from the first subset on.
    secret, shares, check = _lied([1, 2, 3, 4, 5])
    tried = []
    found = shamir.recover(shares, 7, lambda s: tried.append(s) or check(s), suspects=[1, 2, 3, 4, 5])
    assert found == (secret, [1, 2, 3, 4, 5]) and len(tried) == 1 + 5  # one subset, then one test per other share


@pytest.mark.slow  # 792 reconstructions, twice (about 7 s)
def test_recovery_of_the_issues_case_searches_every_subset():
    secret, shares, check = _lied([1, 2, 3, 4, 5])
    assert shamir.recover(shares, 7, check) == (secret, [1, 2, 3, 4, 5])
    secret, shares, check = _lied([1, 2, 3, 4, 5, 6])  # only 6 honest shares: no subset can pass
    with pytest.raises(shamir.Unrecoverable, match="every one of the 792 subsets was tried"):
        shamir.recover(shares, 7, check)


# -- hostile devices against the coordinator, and the coordinator's own choices ---------------------


COPIED = base64.b64encode(b"\x09" + bytes(31)).decode()  # the X25519 base point: a valid key two copycats answer alike


@pytest.mark.slow  # ~1.0 s: keeps the fast tier under 90 s
def test_devices_answering_a_repeated_public_key_fail_alone(served, hostile):
    """Two devices answer the keys phase with the same key: they fail, the honest three complete the round."""
    honest = [served(noisy(seed, 10 * seed)) for seed in (1, 2, 3)]
    copy = lambda phase, answer: {**answer, "c": COPIED} if phase == "keys" else answer  # noqa: E731
    copycats = [hostile(noisy(seed, 10), copy) for seed in (4, 5)]
    data = FedArrays(model())
    with Federated(data, [*honest, *copycats], timeout=20, min_results=3, secure_aggregation=SecAgg(scale=2**16)) as alg:
        result = alg.round()
    assert sorted(result.failures) == sorted(copycats) and all("not fresh" in why for why in result.failures.values()), result.failures
    assert result.samples == 60
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (1, 2, 3)]), 2**16)


def test_a_threshold_that_is_not_a_majority_is_refused_before_any_device_is_asked():
    from fedsync.transports.local import register_device, unregister_device

    with pytest.raises(ValueError, match="threshold must be an integer from 3"):
        SecAgg(threshold=2)
    names = [f"secagg-minority-{i}" for i in range(6)]
    urls = [register_device(name, noisy(seed, 10)) for seed, name in enumerate(names, 1)]
    try:
        data = FedArrays(model())
        before = {k: v.copy() for k, v in data.model.items()}
        with Federated(data, urls, timeout=20, secure_aggregation=SecAgg(threshold=3)) as alg:
            with pytest.raises(RoundFailed, match="threshold 3 is not a majority of the 6 reachable devices"):
                alg.round()
        assert all(np.array_equal(before[k], data.model[k]) for k in before)
        with Federated(data, urls, timeout=20, secure_aggregation=SecAgg()) as alg:  # t = 4: the same devices take it
            assert alg.round().samples == 60
    finally:
        for name in names:
            unregister_device(name)


# -- integer arrays stay exact (issue #22): as plain FedAvg, whatever clip and scale ------------------


INTEGERS = {  # per device (seed 1, 2, 3): counters, a 2**62 buffer, extremes of each dtype, masks
    "num_batches_tracked": lambda s: np.array(6 * s, np.int64),
    "big": lambda s: np.array([2**62 + 3, -(2**63) + s, 2**63 - 1 - s], np.int64),
    "u64": lambda s: np.array([2**64 - 1, 2**63 + s, 0], np.uint64),
    "i8": lambda s: np.array([-128, 127, 3 * s - 5], np.int8),
    "flag": lambda s: np.array([s == 1, s < 3, True, False]),
}


def _with_integers(seed: int, samples: int) -> FedArrays:
    def train(weights):
        weights["w"] += np.float32(0.01 * seed)
        for name, value in INTEGERS.items():
            weights[name][...] = value(seed)
        return samples

    return FedArrays(_integer_model(), train)


def _integer_model():
    return {"w": np.zeros(4, np.float32), **{name: np.zeros_like(value(1)) for name, value in INTEGERS.items()}}


@pytest.mark.parametrize("options", [{}, {"clip": 1e-3, "scale": 1}, {"clip": 1.0, "scale": 1, "max_samples": 2**53}])
def test_integer_and_boolean_arrays_merge_exactly_as_plain_fedavg(options):
    from fedsync.transports.local import register_device, unregister_device

    names = [f"secagg-int-{i}" for i in range(3)]
    urls = [register_device(name, _with_integers(seed, 10 * seed + 1)) for name, seed in zip(names, (1, 2, 3))]
    try:
        plain = FedArrays(_integer_model())
        Federated(plain, urls, timeout=30).round()
        secure = FedArrays(_integer_model())
        with Federated(secure, urls, timeout=30, secure_aggregation=SecAgg(**options)) as alg:
            assert alg.round().samples == 63
    finally:
        for name in names:
            unregister_device(name)
    for name in INTEGERS:
        got, want = secure.model[name], plain.model[name]
        assert got.dtype == want.dtype and np.array_equal(got, want), (name, got, want)
    assert int(secure.model["num_batches_tracked"]) == 14  # (6*11 + 12*21 + 18*31) / 63 = 13.9
