"""A device reuses its last payload's buffer, unless its FedData kept a view of it."""

import weakref

import numpy as np

import fedsync
from fedsync import FedArrays, Federated


def weights(value: float = 0.0):
    return {"w": np.full((256, 64), value, np.float32), "b": np.full(64, value, np.float32)}


def set_to(value):
    def train(model):
        for a in model.values():
            a[...] = value
        return 1

    return train


def test_device_reads_every_round_into_the_same_buffer():
    buffers = []

    class Watching(FedArrays):
        def receive(self, encoding, repetition):
            # A weak reference: a strong one here would (rightly) stop the reuse.
            buffers.append(weakref.ref(encoding.obj))
            super().receive(encoding, repetition)

    with fedsync.serve(Watching(weights(), set_to(1.0)), port=0, block=False) as server, \
         Federated(data=FedArrays(weights()), remotes=[server.url]) as alg:
        alg.round()
        alg.round()
    assert len(buffers) == 2 and buffers[0]() is not None
    assert buffers[0]() is buffers[1]()  # round 2 read into round 1's buffer


def test_a_payload_the_fed_data_kept_is_never_overwritten():
    kept = []

    class Keeping(FedArrays):
        def receive(self, encoding, repetition):
            kept.append(encoding)  # a FedData may hold on to what it received
            super().receive(encoding, repetition)

    coordinator = FedArrays(weights(3.0))
    with fedsync.serve(Keeping(weights(), set_to(1.0)), port=0, block=False) as server, \
         Federated(data=coordinator, remotes=[server.url]) as alg:
        alg.round()
        first = bytes(kept[0])
        alg.round()
    assert bytes(kept[0]) == first  # round 2 read into a fresh buffer
    assert kept[0].obj is not kept[1].obj
    arrays, _ = fedsync.wire.codec.decode(kept[0])
    assert np.all(arrays["w"] == 3.0)
