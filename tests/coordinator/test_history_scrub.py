"""A device cannot plant the coordinator's token in what the coordinator saves or shows: a metric
named after it (training or evaluation), or a string in its report, is scrubbed before the round
reaches the history, the state file, the checkpoint, the dashboard or the next round's payload (#22)."""

import json

import numpy as np
import requests

import fedsync
from fedsync import FedArrays, Federated, Remote

TOKEN = "s3cret-token-0123456789abcdef"


def planting_device():
    """A device behind ``TOKEN`` that names its metrics after the token it was given."""

    def train(w):
        w["w"][...] = 1.0
        return 4, {TOKEN: 0.5, f"loss-{TOKEN}": 1.0, "loss": 2.0}

    def evaluate(w):
        return 4, {f"acc {TOKEN}": 0.75}

    return FedArrays({"w": np.zeros(3, np.float32)}, train, evaluate=evaluate)


def test_a_metric_named_after_the_token_is_scrubbed_everywhere_it_is_saved_or_shown(tmp_path):
    server = fedsync.serve(planting_device(), port=0, block=False, token=TOKEN)
    try:
        folder = tmp_path / "run"
        with Federated(
            FedArrays({"w": np.zeros(3, np.float32)}), [Remote(server.url, token=TOKEN)], checkpoint=folder, dashboard=0
        ) as alg:
            alg.fit(2, evaluate_every=1, progress=False)
            shown = [requests.get(alg.dashboard.url + p, timeout=30).text for p in ("/api/history", "/api/devices")]
            payload = bytes(alg.data.serialize(alg.repetition + 1))  # what the next round would send
        history = alg.history
    finally:
        server.close()
    assert history[-1].metrics["loss"] == 2.0 and history[-1].evaluation is not None
    saved = [p.read_bytes() for p in folder.rglob("*") if p.is_file()]
    texts = {"history": history.to_json(), "payload": payload, "dashboard": "".join(shown)}
    texts.update({f"file {n}": raw for n, raw in enumerate(saved)})
    for where, text in texts.items():
        data = text.encode() if isinstance(text, str) else text
        assert TOKEN.encode() not in data, f"the token is in the {where}"
    names = set(history[-1].metrics) | set(history[-1].evaluation.metrics)
    assert "loss-[token]" in names and "acc [token]" in names, names
    assert json.loads(history.to_json())["rounds"][0]["devices"][server.url]["metrics"]["loss"] == 2.0
