"""Secure aggregation's availability: one bad peer is that peer's failure alone (issue #10's rule).

An undecryptable share fails its sender (receivers name it, the coordinator drops it and
delivers the inbox again); a lying accuser can cost at most what docs/privacy.md says; a
failed setup does not make a restarted coordinator's first round stale.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography")
pytest.importorskip("Crypto")

from fedsync import FedArrays, Federated, Remote  # noqa: E402
from fedsync.errors import RoundFailed  # noqa: E402
from fedsync.secagg import SecAgg  # noqa: E402
from fedsync.secagg.disputes import resolve  # noqa: E402
from tests.support.devices.secagg import model, noisy, update  # noqa: E402
from tests.support.secagg import assert_within_quantization, fedavg, keys_body, post, submit_and_wait  # noqa: E402

D = "tests.support.devices.secagg:"
ROOT = Path(__file__).resolve().parents[2]


def flipped(text: str) -> str:
    raw = base64.b64decode(text)
    return base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode()


def setup_by_hand(urls: list[str], rep: int, threshold: int = 3) -> dict[int, dict[str, str]]:
    """The keys and shares phases, by hand: what each device sent, by sender id."""
    answers = {i: post(u, rep, "keys", keys_body(i, len(urls), threshold)).json() for i, u in enumerate(urls, 1)}
    table = {str(i): {"c": a["c"], "s": a["s"]} for i, a in answers.items()}
    return {i: post(u, rep, "shares", {"keys": table}).json()["shares"] for i, u in enumerate(urls, 1)}


def inbox_for(me: int, ids: list[int], sent: dict[int, dict[str, str]], bad: tuple[int, ...] = ()) -> dict:
    shares = {str(v): (flipped if v in bad else str)(sent[v][str(me)]) for v in ids if v != me}
    return {"participants": ids, "shares": shares}


# -- the dispute rule ---------------------------------------------------------------------------


def test_the_dispute_rule_drops_a_garbage_sender_alone_and_a_liar_that_accuses_several():
    assert resolve({1: [4], 2: [4], 3: [4]})[0] == [4]  # one garbage sender, every receiver names it
    assert resolve({1: [4]})[0] == [4]  # a lone dispute: the accused goes (one lie costs one honest device at most)
    assert resolve({1: [2, 3, 4]})[0] == [1]  # the accuser of several is the most disputed
    assert resolve({1: [4, 5], 2: [4, 5], 3: [4, 5]})[0] == [4, 5]  # two garbage senders
    dropped, disputes = resolve({1: [2]})
    assert dropped == [2]
    assert resolve({1: [3]}, disputes)[0] == [1]  # a second lie in a later delivery: the liar is now the most disputed
    assert resolve({})[0] == []


# -- the device's inbox -------------------------------------------------------------------------


def test_an_inbox_refusal_names_every_sender_whose_share_does_not_decrypt_and_changes_nothing(served):
    urls = [served(noisy(seed, 5)) for seed in (1, 2, 3, 4)]
    sent = setup_by_hand(urls, 1)
    refused = post(urls[0], 1, "inbox", inbox_for(1, [1, 2, 3, 4], sent, bad=(2, 4)))
    assert refused.status_code == 400 and refused.json()["error"] == "secagg_bad_share" and refused.json()["senders"] == [2, 4], refused.text
    assert "[2, 4]" in refused.json()["message"]
    assert post(urls[0], 1, "inbox", inbox_for(1, [1, 2, 3, 4], sent)).json() == {"participants": 4}  # nothing was kept


def test_a_second_inbox_takes_only_a_subset_of_the_first_and_only_before_submit(served):
    urls = [served(noisy(seed, 5)) for seed in (1, 2, 3, 4)]
    sent = setup_by_hand(urls, 1)
    assert post(urls[0], 1, "inbox", inbox_for(1, [1, 2, 3, 4], sent)).status_code == 200
    assert post(urls[0], 1, "inbox", inbox_for(1, [1, 2, 3], sent)).json() == {"participants": 3}  # 4 dropped
    back = post(urls[0], 1, "inbox", inbox_for(1, [1, 2, 3, 4], sent))  # 4 taken back: refused
    assert back.status_code == 409 and back.json()["error"] == "secagg_inconsistent", back.text
    for u, me in ((urls[1], 2), (urls[2], 3)):
        assert post(u, 1, "inbox", inbox_for(me, [1, 2, 3], sent)).status_code == 200
    coordinator = FedArrays(model())
    for url in urls[:3]:
        submit_and_wait(url, 1, coordinator)
    late = post(urls[0], 1, "inbox", inbox_for(1, [1, 2, 3], sent))  # its masks depend on the inbox now
    assert late.status_code == 409 and late.json()["error"] == "secagg_out_of_order", late.text
    # The device masked with the second list: survivors 1, 2, 3 and nobody dropped is its whole participant set.
    answer = post(urls[0], 1, "unmask", {"survivors": [1, 2, 3], "dropped": []})
    assert answer.status_code == 200 and sorted(answer.json()["b"]) == ["1", "2", "3"], answer.text


def test_info_reports_the_repetition_of_a_setup_that_never_reached_submit(served):
    url = served(noisy(1, 5))
    assert post(url, 7, "keys", keys_body(1)).status_code == 200
    assert Remote(url).info()["repetition"] == 7  # keys at 7 is refused from now on: the handshake says so
    assert post(url, 7, "keys", keys_body(1)).json()["error"] == "stale_repetition"


# -- the coordinator, with in-process devices over real HTTP ------------------------------------


def test_a_sender_of_undecryptable_shares_fails_alone_and_the_round_completes(served, hostile):
    honest = [served(noisy(seed, 10 * seed)) for seed in (1, 2, 3)]
    garble = lambda phase, answer: {"shares": {v: flipped(t) for v, t in answer["shares"].items()}} if phase == "shares" else answer  # noqa: E731
    bad = hostile(noisy(4, 40), garble)
    data = FedArrays(model())
    with Federated(data, [bad, *honest], timeout=20, min_results=3, secure_aggregation=SecAgg(threshold=3, scale=2**16)) as alg:
        result = alg.round()
    assert list(result.failures) == [bad] and result.failures[bad].startswith("SecAggBadShare"), result.failures
    assert all(url in result.failures[bad] for url in honest), result.failures[bad]  # every receiver accused it
    assert result.samples == 60
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (1, 2, 3)]), 2**16)


# -- device processes ---------------------------------------------------------------------------


@pytest.mark.slow  # four device processes
def test_a_garbage_sender_process_fails_alone(devices):
    started = [devices(D + "noisy", seed, 10 * seed) for seed in (1, 2, 3)] + [devices(D + "garbler", 4, 40)]
    data = FedArrays(model())
    with Federated(data, [d.url for d in started], timeout=30, min_results=3, secure_aggregation=SecAgg(threshold=3, scale=2**16)) as alg:
        result = alg.round()
    assert list(result.failures) == [started[3].url] and "SecAggBadShare" in result.failures[started[3].url], result.failures
    assert all(d.url in result.failures[started[3].url] for d in started[:3])  # every receiver named it
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (1, 2, 3)]), 2**16)


@pytest.mark.slow  # five device processes
def test_a_lying_accuser_of_several_devices_is_dropped_itself(devices):
    started = [devices(D + "accuser", 9, 90, 2, 3)] + [devices(D + "noisy", seed, 10 * seed) for seed in (1, 2, 3, 4)]
    data = FedArrays(model())
    with Federated(data, [d.url for d in started], timeout=30, min_results=4, secure_aggregation=SecAgg(scale=2**16)) as alg:
        result = alg.round()
    assert list(result.failures) == [started[0].url] and "SecAggAccusation" in result.failures[started[0].url], result.failures
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (1, 2, 3, 4)]), 2**16)


@pytest.mark.slow  # four device processes
def test_a_lie_against_one_device_costs_that_device_alone(devices):
    started = [devices(D + "accuser", 9, 90, 2)] + [devices(D + "noisy", seed, 10 * seed) for seed in (1, 2, 3)]
    data = FedArrays(model())
    with Federated(data, [d.url for d in started], timeout=30, min_results=3, secure_aggregation=SecAgg(threshold=3, scale=2**16)) as alg:
        result = alg.round()
    assert list(result.failures) == [started[1].url], result.failures  # the documented cost of one lie
    assert_within_quantization(data.model, fedavg([(update(s), 10 * s) for s in (9, 2, 3)]), 2**16)


RESTARTED = """
import json, sys
from fedsync import FedArrays, Federated
from fedsync.secagg import SecAgg
from tests.support.devices.secagg import model
with Federated(FedArrays(model()), sys.argv[1:], timeout=30, secure_aggregation=SecAgg()) as alg:
    result = alg.round()
print(json.dumps({"repetition": result.repetition, "samples": result.samples, "failures": result.failures}))
"""


@pytest.mark.slow  # four device processes and a coordinator process
def test_a_restarted_coordinator_goes_above_a_failed_setup_at_once(devices):
    honest = [devices(D + "noisy", seed, 10 * seed) for seed in (1, 2, 3)]
    bad = devices(D + "garbler", 4, 40)
    data = FedArrays(model())
    with Federated(data, [bad.url, *(d.url for d in honest)], timeout=30, secure_aggregation=SecAgg(threshold=4)) as alg:
        with pytest.raises(RoundFailed, match="fewer than the secure-aggregation threshold 4") as raised:
            alg.round()  # the garbler is dropped in the inbox phase: 3 left, below t = 4
    assert "SecAggBadShare" in raised.value.failures[bad.url]
    assert all(Remote(d.url).info()["repetition"] == 1 for d in honest)  # keys ran at 1; nothing was submitted
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", RESTARTED, *(d.url for d in honest)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"repetition": 2, "samples": 60, "failures": {}}
    assert np.array_equal(data.model["w"], model()["w"])  # the failed round changed nothing


# -- a silent device in a phase: its failure alone (issue #22) --------------------------------------


@pytest.mark.slow  # waits out a phase's share of an 8 s round (about 4 s each)
@pytest.mark.parametrize("phase", ["keys", "unmask"])
def test_a_device_silent_in_a_phase_is_dropped_and_the_round_goes_on(served, hostile, phase):
    """The round's timeout (8 s) is under the remote's 30 s default: a phase waits only its share of the time left."""
    import threading

    released = threading.Event()

    def silent(asked, answer):
        if asked == phase:
            released.wait(60)  # never answers within the round
        return answer

    honest = [served(noisy(seed, 10 * seed)) for seed in (1, 2, 3, 4)]
    quiet = hostile(noisy(5, 50), silent)
    data = FedArrays(model())
    try:
        with Federated(data, [*honest, quiet], timeout=8, min_results=3, secure_aggregation=SecAgg(scale=2**16)) as alg:
            result = alg.round()
    finally:
        released.set()
    assert list(result.failures) == [quiet] and "RemoteTimeout" in result.failures[quiet], result.failures
    # Silent in keys: not in the round; silent in unmask: its masked result is in the sum, its seed rebuilt.
    expected = [(update(s), 10 * s) for s in (1, 2, 3, 4)] + ([(update(5), 50)] if phase == "unmask" else [])
    assert result.samples == sum(n for _, n in expected)
    assert_within_quantization(data.model, fedavg(expected), 2**16)
