"""Federated evaluation, fit with history and callbacks, checkpoints and resume."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from fedsync import EarlyStopping, FedArrays, Federated, History
from fedsync.wire import codec
from fedsync.coordinator.checkpoint import CheckpointError
from fedsync.errors import RoundFailed
from tests.support.seed_fedfloat import FedFloat
from tests.support.processes import rounds_done

ROOT = Path(__file__).resolve().parents[2]


def weights():
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_evaluation_uses_the_global_model_and_weighs_by_samples(devices):
    a = devices("evaluating", 1.0, 30, 30, 0.9)
    b = devices("evaluating", 4.0, 10, 10, 0.5)
    data = weights()
    with Federated(data=data, remotes=[a.url, b.url]) as alg:
        alg.round()
        result = alg.evaluate()
        again = alg.evaluate()  # evaluation changed nothing on the devices
    assert result.samples == 40
    assert result.metrics["accuracy"] == pytest.approx((0.9 * 30 + 0.5 * 10) / 40)
    assert result.metrics["mean_w"] == pytest.approx(1.75)  # both evaluated the merged model
    assert result.devices[a.url] == {"samples": 30, "metrics": {"accuracy": 0.9, "mean_w": 1.75}}
    assert again.metrics == result.metrics and np.all(data.model["w"] == 1.75)


def test_evaluation_without_callback_is_reported_per_device(devices):
    device = devices("constant", 1.0, 3)
    with Federated(data=weights(), remotes=[device.url]) as alg:
        with pytest.raises(RoundFailed) as caught:
            alg.evaluate()
    # its /info says it does not evaluate (#24): named before anything is sent
    assert "NotSupported" in caught.value.failures[device.url] and "does not evaluate" in caught.value.failures[device.url]


def test_fit_records_history_with_metrics_and_evaluation(devices, tmp_path):
    a = devices("evaluating", 1.0, 30, 30, 0.9)
    b = devices("evaluating", 4.0, 10, 10, 0.5)
    with Federated(data=weights(), remotes=[a.url, b.url]) as alg:
        history = alg.fit(4, evaluate_every=2, progress=False)
    assert len(history) == 4 and history is alg.history
    first = history[0]
    assert first.repetition == 1 and sorted(first.answered) == sorted([a.url, b.url])
    assert first.samples == 40 and first.metrics == {"loss": pytest.approx(1.75)}
    assert first.devices[a.url]["samples"] == 30
    assert first.bytes_sent == 2 * len(weights().serialize(1))  # the same payload to each device
    # Each device replies alike every round (same layout, same-length metadata): its last reply's
    # Content-Length, read from the device itself, is what the coordinator counted per reply.
    replies = [len(requests.get(f"{d.url}/4/result", timeout=10).content) for d in (a, b)]
    assert [r.bytes_received for r in history] == [sum(replies)] * 4
    assert first.seconds > 0
    assert [r.evaluation is not None for r in history] == [False, True, False, True]
    assert history.metric("accuracy", evaluation=True) == [None, pytest.approx(0.8), None, pytest.approx(0.8)]

    history.save(tmp_path / "history.json")
    loaded = History.load(tmp_path / "history.json")
    assert loaded.to_json() == history.to_json()
    assert loaded[1].evaluation.metrics == history[1].evaluation.metrics
    assert json.loads((tmp_path / "history.json").read_text())["rounds"][0]["samples"] == 40


def test_early_stopping_callback(devices):
    device = devices("constant", 2.0, 5)  # the loss never improves
    seen = []
    with Federated(data=weights(), remotes=[device.url]) as alg:
        history = alg.fit(10, callbacks=[lambda alg, r: seen.append(r.repetition), EarlyStopping("loss", patience=2, mode="min", evaluation=False)], progress=False)
    assert len(history) == 3 and seen == [1, 2, 3]


def test_checkpoint_resumes_in_process(devices, tmp_path):
    device = devices("fedfloat", 5.0)
    with Federated(data=FedFloat(1.0), remotes=[device.url], checkpoint=tmp_path / "run") as alg:
        alg.fit(2, progress=False)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["repetition"] == 2
    resumed = Federated(data=FedFloat(0.0), remotes=[device.url], checkpoint=tmp_path / "run")
    assert resumed.data.value == 5.0 and resumed.repetition == 2 and len(resumed.history) == 2
    with resumed:
        resumed.fit(3, progress=False)
    assert [r.repetition for r in resumed.history] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.json", "round-000003", "run.json"]


def test_checkpoint_of_another_model_is_refused(devices, tmp_path):
    device = devices("constant", 1.0, 3)
    with Federated(data=weights(), remotes=[device.url], checkpoint=tmp_path / "run") as alg:
        alg.round()
    other = FedArrays({"w": np.zeros(5, np.float32)})
    with pytest.raises(CheckpointError, match="specs"):
        Federated(data=other, remotes=[device.url], checkpoint=tmp_path / "run")


def run_coordinator(checkpoint, rounds, out, urls):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tests.support.run_coordinator", str(checkpoint), str(rounds), str(out), *urls], cwd=ROOT, env=env)


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_coordinator_killed_mid_run_resumes_to_the_same_model(devices, tmp_path):
    shards = [(0, 40, -1.0), (1, 120, 0.0)]
    urls = [devices("linreg", seed, n, shift).url for seed, n, shift in shards]
    rounds = 8

    straight = run_coordinator(tmp_path / "straight", rounds, tmp_path / "straight.safetensors", urls)
    assert straight.wait(timeout=120) == 0

    victim = run_coordinator(tmp_path / "killed", rounds, tmp_path / "killed.safetensors", urls)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and rounds_done(tmp_path / "killed") < 3:
        time.sleep(0.01)
    victim.kill()
    victim.wait(timeout=10)
    assert 3 <= rounds_done(tmp_path / "killed") < rounds, "the coordinator finished before it could be killed"

    resumed = run_coordinator(tmp_path / "killed", rounds, tmp_path / "killed.safetensors", urls)
    assert resumed.wait(timeout=120) == 0

    expected, _ = codec.decode((tmp_path / "straight.safetensors").read_bytes())
    got, _ = codec.decode((tmp_path / "killed.safetensors").read_bytes())
    for name in expected:
        # Deterministic device training: only the order in which replies were summed may differ.
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-15)
    history = History.load(next((tmp_path / "killed").glob("round-*")) / "history.json")
    assert len(history) == rounds


def test_failed_evaluation_does_not_lose_the_merged_round(devices, tmp_path):
    device = devices("constant", 2.0, 5)  # no evaluate callback
    with Federated(data=weights(), remotes=[device.url], checkpoint=tmp_path / "run") as alg:
        history = alg.fit(2, evaluate_every=1, progress=False)
    assert len(history) == 2 and np.all(alg.data.model["w"] == 2.0)
    assert "does not evaluate" in history[0].evaluation.failures[device.url]
    assert history[0].evaluation.metrics == {}
    assert len(History.load(next((tmp_path / "run").glob("round-*")) / "history.json")) == 2
