"""A reply's metadata is strict JSON: a key given twice or NaN/Infinity is refused, naming it, and changes nothing.

The parts of a bundle and the metrics of a reply travel as JSON text in the payload's metadata;
Python's ``json`` keeps the last of two equal keys (other parsers the first) and reads ``NaN``.
"""

import json

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, FedBundle, Federated
from fedsync.data.arrays import METRICS_KEY
from fedsync.data.bundle import PARTS_KEY
from fedsync.errors import PayloadRejected
from fedsync.wire import codec
from tests.support import hostile
from tests.support.seed_fedfloat import FedFloat


def weights() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def constant(value: float) -> FedArrays:
    def train(model):
        for a in model.values():
            a[...] = value
        return 10, {"loss": value}

    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, train)


@pytest.mark.parametrize(
    "metrics, why",
    [
        ('{"loss": 0.5, "loss": 9.0}', "payload metadata 'fedsync.metrics' names the key 'loss' twice"),
        ('{"loss": NaN}', "payload metadata 'fedsync.metrics' holds NaN, not a finite number"),
        ('{"loss": -Infinity}', "payload metadata 'fedsync.metrics' holds -Infinity, not a finite number"),
    ],
    ids=["twice", "nan", "-infinity"],
)
def test_a_reply_whose_metrics_name_a_key_twice_or_hold_a_constant_is_that_devices_failure(metrics, why):
    healthy = fedsync.serve(constant(2.0), port=0, block=False)
    bad = hostile.serve("reply", {"metadata": {METRICS_KEY: metrics}})
    bad_url = f"http://127.0.0.1:{bad.server_address[1]}"
    data = weights()
    try:
        with Federated(data, [healthy.url, bad_url], min_results=1, timeout=20) as alg:
            result = alg.round()
    finally:
        healthy.close()
        bad.shutdown()
        bad.server_close()
    assert result.answered == [healthy.url] and list(result.failures) == [bad_url]
    assert why in result.failures[bad_url], result.failures
    assert np.all(data.model["w"] == 2.0) and data.last_merge["samples"] == 10  # the honest reply alone
    assert result.metrics == {"loss": 2.0}


def test_metrics_given_whole_are_strict_too():
    data = FedArrays({"w": np.zeros(2)})
    reply = codec.encode({"w": np.ones(2)}, {"fedsync.samples": "3", METRICS_KEY: '{"a": 1, "b": 2, "a": 3}'})
    with pytest.raises(PayloadRejected, match="names the key 'a' twice"):
        data.merge([reply], 1)
    assert data.last_merge is None and np.all(data.model["w"] == 0)


def bundle() -> FedBundle:
    return FedBundle({"weights": FedArrays({"w": np.zeros(2, np.float32)}), "threshold": FedFloat(0.5)})


def with_parts(parts: str) -> bytes:
    arrays, metadata = codec.decode(bytes(bundle().serialize(1)))
    metadata[PARTS_KEY] = parts
    return codec.encode(dict(arrays), metadata)


def parts_text(weights_entry: str) -> str:
    kinds = json.loads(codec.decode(bytes(bundle().serialize(1)))[1][PARTS_KEY])
    return '{"weights": %s, "threshold": %s}' % (weights_entry, json.dumps(kinds["threshold"]))


@pytest.mark.parametrize(
    "entry, why",
    [
        ('{"specs": "other", "specs": "%s"}', "names the key 'specs' twice"),
        ('{"specs": "%s", "text": false, "x": NaN}', "holds NaN, not a finite number"),
    ],
    ids=["specs-twice", "nan"],
)
def test_bundle_parts_metadata_naming_a_key_twice_or_holding_a_constant_is_refused_and_changes_nothing(entry, why):
    specs = bundle().parts["weights"].specs(1)
    payload = with_parts(parts_text(entry % specs))
    data = bundle()
    before = data.parts["weights"].get_arrays()["w"].copy(), data.parts["threshold"].value
    for use in (lambda: data.check(payload, 1), lambda: data.merge([payload], 1)):
        with pytest.raises(PayloadRejected, match=f"bundle payload's 'fedsync.parts' metadata {why}"):
            use()
    assert np.all(data.parts["weights"].get_arrays()["w"] == before[0]) and data.parts["threshold"].value == before[1]
