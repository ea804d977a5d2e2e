"""Per-device instructions (issue #23, item 1): a sampler, a count per round, a configuration per device.

The sampler chooses each round's devices with the coordinator's seeded generator and is refused
(before anything is sent) when it answers unknown devices, duplicates or too few; ``config(server_round,
device)`` gives each sampled device its own configuration, lists and mappings included, the same over
real HTTP, simulation threads and worker processes.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import requests

from fedsync import FedArrays, Federated
from fedsync.coordinator.simulation import device_id, local_remotes, run_simulation
from fedsync.strategies import DPFixedClipping
from tests.support.devices.research import straggler


def model() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


def info(url: str) -> dict:
    return requests.get(f"{url}/info", timeout=10).json()


def stragglers_and_epochs(stragglers_share: float):
    """The FedProx experiment's pattern: 4 of 10 devices a round, a share of them told to do 1 local epoch."""
    told: dict[int, list[int]] = {}

    def sampler(server_round, available, rng):
        chosen = rng.sample(available, 4)
        told[server_round] = sorted(device_id(url) for url in chosen[: round(stragglers_share * 4)])
        return chosen

    def config(server_round, device):
        slow = device_id(device) in told[server_round]
        return {"epochs": 1 if slow else 5, "stragglers": told[server_round], "optimizer": {"momentum": 0.5}}

    return sampler, config, told


def test_a_sampler_chooses_stragglers_and_each_device_gets_its_own_local_epochs():
    sampler, config, told = stragglers_and_epochs(0.5)
    history = run_simulation(straggler, 10, 3, data=model(), sampler=sampler, config=config, seed=7, workers=2, progress=False)
    for number, result in enumerate(history, start=1):
        assert len(result.answered) == 4 and not result.failures
        for url, row in result.devices.items():
            metrics = row["metrics"]
            assert metrics["epochs"] == (1.0 if device_id(url) in told[number] else 5.0), (number, url)
            assert metrics["stragglers"] == 2.0 and metrics["momentum"] == 0.5  # a list and a mapping arrived
    again_sampler, again_config, _ = stragglers_and_epochs(0.5)
    again = run_simulation(straggler, 10, 3, data=model(), sampler=again_sampler, config=again_config, seed=7, workers=2, progress=False)
    # The seeded generator: the same devices each round (answered lists them in arrival order).
    assert [sorted(r.answered) for r in again] == [sorted(r.answered) for r in history]


@pytest.mark.slow
def test_the_same_sampler_and_per_device_config_on_worker_processes():
    sampler, config, told = stragglers_and_epochs(0.25)
    history = run_simulation(
        "tests.support.devices.research:straggler", 8, 2, data=model(), sampler=sampler, config=config,
        seed=1, workers=2, worker_kind="processes", progress=False,
    )  # fmt: skip
    for number, result in enumerate(history, start=1):
        assert len(result.answered) == 4 and not result.failures
        epochs = {device_id(url): row["metrics"]["epochs"] for url, row in result.devices.items()}
        assert epochs == {i: 1.0 if i in told[number] else 5.0 for i in epochs}


def test_the_sampler_is_handed_the_round_the_urls_and_the_coordinators_seeded_generator():
    seen = []

    def sampler(server_round, available, rng):
        seen.append((server_round, list(available), type(rng)))
        return available[server_round - 1 : server_round + 1]

    history = run_simulation(straggler, 5, 3, data=model(), sampler=sampler, seed=3, workers=2, progress=False)
    urls = [f"local://device-{i}" for i in range(5)]
    assert seen == [(n, urls, random.Random) for n in (1, 2, 3)]
    assert [sorted(r.answered) for r in history] == [urls[0:2], urls[1:3], urls[2:4]]


@pytest.mark.parametrize(
    "answer, error, words",
    [
        (lambda available: [*available[:2], "local://device-99"], ValueError, ["not among", "device-99"]),
        (lambda available: [available[0], available[0]], ValueError, ["more than once", "device-0"]),
        (lambda available: available[:1], ValueError, ["1 device(s)", "fewer than the 2", "min_results"]),
        (lambda available: [], ValueError, ["0 device(s)"]),
        (lambda available: "local://device-0", TypeError, ["list of devices"]),
        (lambda available: [3], ValueError, ["not among"]),
    ],
)
def test_a_bad_sampler_answer_is_refused_before_anything_is_sent(answer, error, words):
    built = []

    def device_fn(i):
        built.append(i)
        return straggler(i)

    with pytest.raises(error) as caught:
        run_simulation(device_fn, 4, 1, data=model(), sampler=lambda r, available, rng: answer(available), min_results=2, workers=1, progress=False)
    assert all(word in str(caught.value) for word in words), str(caught.value)
    assert built == []  # no device was even built: nothing was sent


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
def test_a_bad_sampler_over_http_sends_nothing(devices):
    first, second = devices("tests.support.devices.research:straggler", 1), devices("tests.support.devices.research:straggler", 2)
    with Federated(model(), [first.url, second.url], sampler=lambda r, available, rng: [*available, available[0]]) as alg:
        with pytest.raises(ValueError, match="more than once"):
            alg.round()
    assert [info(d.url)["repetition"] for d in (first, second)] == [0, 0]
    with pytest.raises(TypeError, match=r"sampler\(server_round, available, rng\)"):
        Federated(model(), [first.url], sampler=[first.url])


@pytest.mark.slow  # ~1.1 s: keeps the fast tier under 90 s
def test_a_per_device_config_over_http_reaches_each_device(devices):
    ones = [devices("tests.support.devices.research:straggler", i) for i in (1, 2, 3)]
    urls = [d.url for d in ones]
    epochs = {urls[0]: 1, urls[1]: 3, urls[2]: 7}
    with Federated(model(), urls, devices_per_round=2, seed=5,
                   config=lambda rnd, device: {"epochs": epochs[device], "stragglers": [rnd] * 3}) as alg:  # fmt: skip
        result = alg.round()
    assert len(result.answered) == 2
    for url, row in result.devices.items():
        assert row["metrics"]["epochs"] == epochs[url] and row["metrics"]["stragglers"] == 3.0


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
def test_a_bad_per_device_config_names_the_device_and_sends_nothing(devices):
    one, two = devices("tests.support.devices.research:straggler", 1), devices("tests.support.devices.research:straggler", 2)

    def config(server_round, device):
        return {"epochs": 2, "stragglers": [[1]] if device == two.url else [1]}

    with Federated(model(), [one.url, two.url], config=config) as alg:
        with pytest.raises(ValueError, match=rf"config\(1, '{two.url}'\)\['stragglers'\]\[0\]"):
            alg.round()
    assert [info(d.url)["repetition"] for d in (one, two)] == [0, 0]


def test_devices_per_round_samples_that_many_and_excludes_fraction():
    history = run_simulation(straggler, 9, 2, data=model(), devices_per_round=3, seed=2, workers=2, progress=False)
    assert [len(r.answered) for r in history] == [3, 3]
    remotes = local_remotes(straggler, 4)
    with pytest.raises(ValueError, match="pass one of them"):
        Federated(model(), remotes, fraction=0.5, devices_per_round=2)
    for bad in (0, 5, 2.0, True, "2"):
        with pytest.raises(ValueError, match="devices_per_round must be an integer between 1 and the number of remotes"):
            Federated(model(), remotes, devices_per_round=bad)
    assert Federated(model(), remotes, devices_per_round=3).share == 3 / 4


def test_a_sampler_under_central_dp_is_refused():
    data = FedArrays({"w": np.zeros(3)}, strategy=DPFixedClipping(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2))
    with pytest.raises(ValueError, match="central DP"):
        run_simulation(straggler, 4, 1, data=data, sampler=lambda r, available, rng: available[:2], workers=1, progress=False)


def test_device_id_reads_a_simulated_url():
    assert device_id("local://device-7") == 7 and device_id("ray://sim-ab12-1/device-30") == 30
    for bad in ("http://10.0.0.5:8000", "local://device-", "local://device-7x", "device-3"):
        with pytest.raises(ValueError, match="not a simulated device"):
            device_id(bad)


def test_a_run_resumed_from_its_checkpoint_samples_as_the_uninterrupted_run(tmp_path):
    # Each round's draw comes from the seed and the round's number, not from the draws before it: before, a
    # resumed coordinator started its generator over and sampled round 3 as round 1 (the replay docs said so).
    def sampled(rounds, folder, start=None):
        with Federated(model(), local_remotes(straggler, 8), fraction=0.25, seed=11, checkpoint=folder) as alg:
            alg.fit(rounds, progress=False)
            return [sorted(r.answered) for r in alg.history]

    whole = sampled(4, tmp_path / "whole")
    sampled(2, tmp_path / "cut")  # stopped after round 2, then resumed by a new coordinator
    assert sampled(4, tmp_path / "cut") == whole
    assert len({tuple(s) for s in whole}) > 1  # the rounds draw different devices


def test_a_failed_round_retried_draws_anew_and_reruns_draw_alike():
    alg = Federated(model(), local_remotes(straggler, 8), fraction=0.25, seed=5)
    first, retry = alg.sample(), alg.sample()  # the same round number, tried twice
    again = Federated(model(), local_remotes(straggler, 8), fraction=0.25, seed=5)
    assert [r.url for r in again.sample()] == [r.url for r in first] and [r.url for r in again.sample()] == [r.url for r in retry]
    assert {r.url for r in first} != {r.url for r in retry} or len(first) == 8
