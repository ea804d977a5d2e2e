"""What the coordinator negotiates from each device's /info capabilities (#24, item 2): the wire format it sends,
and which devices it asks to evaluate or to take part in secure aggregation.

Real HTTP: devices served by fedsync.serve in this process. A device that lists no wire formats (as one written in
another language from docs/protocol.md) gets the arrays as they are and answers the same way; one that decodes the
coordinator's wire_dtype gets it packed; both merge in one round.
"""

from __future__ import annotations

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, Federated, Remote


class Received(FedArrays):
    """A device that remembers the wire format of each payload it received; ``formats`` overrides its /info list."""

    formats: list[str] | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[str | None] = []

    def receive(self, encoding, repetition, config=None):
        super().receive(encoding, repetition, config)
        self.received.append(self.sending)

    def capabilities(self):
        found = super().capabilities()
        return found if self.formats is None else {**found, "wire_formats": self.formats}


def device(value, samples, formats=None, evaluate=True):
    def train(model):
        model["w"][...] = value
        return samples

    data = Received(
        {"w": np.zeros(4, np.float32)}, train, evaluate=(lambda m: (samples, {"v": value})) if evaluate else None
    )
    data.formats = formats
    return data


def test_a_device_that_cannot_decode_the_wire_format_gets_the_arrays_as_they_are():
    knows, plain = device(0.5, 10), device(1.0, 30, formats=[])
    with fedsync.serve(knows, port=0, block=False) as a, fedsync.serve(plain, port=0, block=False) as b:
        assert Remote(a.url).info()["capabilities"]["wire_formats"] == [
            "float16",
            "bfloat16",
            "int8",
            "int4",
            "topk",
            "stc",
            "delta",
        ]
        coordinator = FedArrays({"w": np.zeros(4, np.float32)}, wire_dtype="float16")
        with Federated(coordinator, [a.url, b.url], timeout=30) as alg:
            result = alg.round()
    assert result.failures == {} and result.samples == 40
    assert knows.received == ["float16"] and plain.received == [None]
    np.testing.assert_array_equal(coordinator.get_arrays()["w"], np.full(4, (0.5 * 10 + 1.0 * 30) / 40, np.float32))


def test_evaluation_asks_only_devices_that_evaluate_and_names_the_others():
    with (
        fedsync.serve(device(0.5, 10), port=0, block=False) as a,
        fedsync.serve(device(1.0, 30, evaluate=False), port=0, block=False) as b,
    ):
        with Federated(FedArrays({"w": np.zeros(4, np.float32)}), [a.url, b.url], timeout=30) as alg:
            alg.round()
            evaluation = alg.evaluate()
    assert evaluation.samples == 10 and set(evaluation.failures) == {b.url}
    assert "does not evaluate" in evaluation.failures[b.url] and "nothing was sent" in evaluation.failures[b.url]


def test_secure_aggregation_refuses_a_device_that_says_it_cannot_before_any_phase():
    pytest.importorskip("cryptography")
    from fedsync.secagg import SecAgg

    class NoSecAgg(Received):
        def capabilities(self):
            return {**super().capabilities(), "secure_aggregation": False}  # as a device without the extra says

    refusing = NoSecAgg({"w": np.zeros(4, np.float32)}, lambda m: 1)
    servers = [
        fedsync.serve(d, port=0, block=False) for d in (device(0.5, 10), device(1.0, 10), device(2.0, 10), refusing)
    ]
    try:
        urls = [s.url for s in servers]
        assert Remote(urls[0]).info()["capabilities"]["secure_aggregation"] is True
        with Federated(
            FedArrays({"w": np.zeros(4, np.float32)}), urls, min_results=3, timeout=30, secure_aggregation=SecAgg()
        ) as alg:
            result = alg.round()
        assert Remote(urls[3]).info()["repetition"] == 0  # no phase, no submission reached it
    finally:
        for s in servers:
            s.close()
    assert result.samples == 30 and set(result.failures) == {urls[3]}
    assert "cannot do secure aggregation" in result.failures[urls[3]]
