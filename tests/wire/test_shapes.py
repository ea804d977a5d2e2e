"""The TypedDicts of fedsync.wire.shapes name exactly the keys that a real device and a real round produce."""

import typing

import numpy as np

import fedsync
from fedsync import FedArrays, Federated, Remote
from fedsync.wire.shapes import DeviceInfo, DeviceReport, EvaluationAnswer, MergeReport


def keys(shape) -> set[str]:
    return set(typing.get_type_hints(shape))


def test_each_shape_has_the_keys_a_device_and_a_round_really_produce():
    def train(model):
        model["w"][...] = 2.0
        return 3, {"loss": 0.5}

    def evaluate(model):
        return 4, {"loss": 0.25}

    device = FedArrays({"w": np.zeros(4, np.float32)}, train, evaluate=evaluate)
    coordinator = FedArrays({"w": np.zeros(4, np.float32)})
    with fedsync.serve(device, port=0, block=False) as server, Federated(data=coordinator, remotes=[server.url]) as alg:
        info = Remote(server.url).info()
        result = alg.round()
        evaluation = alg.evaluate()
        answer = Remote(server.url).evaluate(result.repetition, coordinator.serialize(result.repetition), coordinator.specs(result.repetition))
    assert set(info) == keys(DeviceInfo)
    assert set(answer) == EvaluationAnswer.__required_keys__ and answer == {"samples": 4, "metrics": {"loss": 0.25}}
    assert keys(EvaluationAnswer) == {"samples", "metrics", "weights"}  # weights: an aggregator's answer only
    assert set(coordinator.last_merge) == keys(MergeReport)
    # A device's row has the required keys only: weights and failures below come with an aggregator's reply
    # (tests/aggregator), and the history never keeps them.
    assert DeviceReport.__required_keys__ == {"samples", "metrics"} and keys(DeviceReport) == {"samples", "metrics", "weights", "below"}
    assert [set(row) for row in coordinator.last_merge["devices"]] == [{"samples", "metrics"}]
    assert set(result.devices[server.url]) == {"samples", "metrics"} and set(evaluation.devices[server.url]) == {"samples", "metrics"}
    assert DeviceInfo.__required_keys__ == {"specs", "repetition"}  # what Remote.info checks
