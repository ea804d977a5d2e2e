"""FedKeras carries every weight dtype it accepts: bfloat16 as FedTorch does, and refuses the others when built."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fedsync import Federated
from fedsync.transports.local import LocalRemote

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("keras") is None, reason="needs the keras extra: pip install 'fedsync[keras]'"
    ),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


def bfloat16_model():
    import keras

    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="bfloat16")])


def setting(value: float):
    from fedsync_keras import FedKeras

    def train(model):
        for weight in model.weights:
            weight.assign(np.full(weight.shape, value))
        return 1

    return FedKeras(bfloat16_model(), train)


@pytest.mark.slow  # over a second: the full suite (the fast tier stays under 90 s)
def test_a_bfloat16_model_goes_through_a_round_and_stays_bfloat16():
    import keras

    from fedsync_keras import FedKeras

    data = FedKeras(bfloat16_model())
    assert all(dtype == np.float32 for _, dtype in data.layout().values())  # bfloat16 travels as float32, exactly
    assert FedKeras(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])).specs(1) != data.specs(1)
    devices = [LocalRemote("local://a", device=setting(1.0)), LocalRemote("local://b", device=setting(2.5))]
    with Federated(data, devices) as federated:
        federated.round()
    for weight in data.model.weights:
        assert str(weight.dtype) == "bfloat16"
        assert np.all(keras.ops.convert_to_numpy(weight).astype(np.float32) == 1.75)  # (1.0 + 2.5) / 2, exact


# complex64 builds a real Keras model (TensorFlow's first use costs ~5 s): the full suite
@pytest.mark.parametrize("dtype", [pytest.param("complex64", marks=pytest.mark.slow), "string"])
def test_a_weight_the_codec_cannot_carry_is_refused_when_the_adapter_is_built(dtype):
    import keras

    from fedsync_keras import FedKeras

    class Odd(keras.layers.Layer):
        def build(self, shape):
            self.odd = self.add_weight(shape=(2,), dtype=dtype, initializer="zeros")

        def call(self, x):
            return x

    with pytest.raises(TypeError, match=rf"weight '0:Odd/variable' has dtype {dtype}.*supported: bfloat16"):
        FedKeras(keras.Sequential([keras.Input((3,)), Odd()]))
