"""#25 item 1 with Keras: ``shared="trainable"`` sends ``trainable_weights``; a frozen layer's weights stay and are
fingerprinted, BatchNormalization's moving statistics stay local (each device's own)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import Federated
from fedsync.transports.local import LocalRemote

keras = pytest.importorskip("keras")
FedKeras = pytest.importorskip("fedsync_keras").FedKeras


def model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    base = keras.layers.Dense(8, name="base")
    m = keras.Sequential([keras.Input((5,)), base, keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    base.trainable = False
    return m


def device(i: int) -> FedKeras:
    m = model()
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(i)
    x, y = rng.standard_normal((32, 5)).astype("float32") + i, rng.integers(0, 3, 32)

    def train(net):
        net.fit(x, y, epochs=1, batch_size=16, verbose=0)
        return 32

    return FedKeras(m, train, shared="trainable")


@pytest.mark.slow  # Keras builds and fits three models: ~8 s
def test_keras_trainable_weights_travel_a_frozen_layer_is_pinned_and_batchnorm_statistics_stay_local():
    coordinator = FedKeras(model(), shared="trainable")
    kinds = coordinator.parameter_kinds()
    assert sorted(k for k, v in kinds.items() if v == "frozen") == ["0:Dense/bias", "0:Dense/kernel"]
    assert sorted(k for k, v in kinds.items() if v == "buffer") == [
        "1:BatchNormalization/moving_mean",
        "1:BatchNormalization/moving_variance",
    ]
    assert FedKeras(model(seed=1), shared="trainable").specs(0) != coordinator.specs(0)  # another base
    devices = [device(i) for i in range(2)]
    base = devices[0].get_arrays()["0:Dense/kernel"].copy()
    with Federated(coordinator, [LocalRemote(f"local://k{i}", device=d) for i, d in enumerate(devices)]) as alg:
        assert not alg.round().failures
    np.testing.assert_array_equal(devices[0].get_arrays()["0:Dense/kernel"], base)
    stats = [d.get_arrays()["1:BatchNormalization/moving_mean"] for d in devices]
    assert not np.allclose(stats[0], stats[1])  # each device's own
    merged = coordinator.get_arrays()["2:Dense/kernel"]
    np.testing.assert_allclose(merged, (devices[0].get_arrays()["2:Dense/kernel"] + devices[1].get_arrays()["2:Dense/kernel"]) / 2, rtol=1e-6)
