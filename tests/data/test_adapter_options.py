"""Every array adapter takes FedArrays' keywords through one path (issue #15 B6): wire_dtype, strategy, evaluate."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fedsync import FIRST, FedArrays
from fedsync.strategies import FedAvg

KEYWORDS = {  # a value for each of FedArrays' keywords, and the attribute that keeps it
    "evaluate": (lambda model: 1, "evaluate_fn"),
    "strategy": (FedAvg(), "strategy"),
    "wire_dtype": ("bfloat16", "wire_dtype"),
    "state": ({"c": np.zeros(3)}, "state"),  # kept as given: train updates it in place
    "shared": ("trainable", "shared"),  # which arrays travel (#25)
    "updates": ("delta", "updates"),  # a device replies its update (#25)
    "top_k": (None, "top_k"),  # with updates="topk" only
    "download": ("delta", "download"),  # the coordinator sends the model as a delta from a device's view (#25)
    "download_top_k": (None, "download_top_k"),
}


def torch_adapter():
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    from fedsync_torch import FedTorch

    def build(seed: int = 0, train=None, **options):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        return FedTorch(model, train, **options)

    return build


def keras_adapter():
    pytest.importorskip("keras", reason="the keras extra is not installed")
    from fedsync_keras import FedKeras

    def build(seed: int = 0, train=None, **options):
        import keras

        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
        return FedKeras(model, train, **options)

    return build


ADAPTERS = {"torch": torch_adapter, "keras": keras_adapter}


def test_the_keywords_listed_here_are_fedarrays_own():
    signature = inspect.signature(FedArrays.__init__)
    assert {name for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY} == KEYWORDS.keys()


@pytest.mark.parametrize("name", ["torch", pytest.param("keras", marks=pytest.mark.slow)])  # importing TensorFlow takes seconds
def test_each_fedarrays_keyword_reaches_the_adapter(name):
    build = ADAPTERS[name]()
    for keyword, (value, attribute) in KEYWORDS.items():
        assert getattr(build(**{keyword: value}), attribute) is value, keyword
    with pytest.raises(TypeError, match="wire"):
        build(wire="bfloat16")  # a misspelt keyword is an error, not ignored
    with pytest.raises(ValueError, match="wire_dtype"):
        build(wire_dtype="float8")
    with pytest.raises(TypeError, match="train must be a function"):
        build(train=5)
    with pytest.raises(TypeError, match="evaluate must be a function"):
        build(evaluate="accuracy")


@pytest.mark.parametrize("name", ["torch", pytest.param("keras", marks=pytest.mark.slow)])  # importing TensorFlow takes seconds
def test_a_compressed_round_trip_through_an_adapter(name):
    build = ADAPTERS[name]()
    coordinator, plain = build(0, wire_dtype="bfloat16"), build(0)
    assert coordinator.specs(FIRST) == plain.specs(FIRST)  # the wire format is negotiated, not in the specs (#24)

    def train(model):
        return 10

    device = build(1, train)  # declares no wire_dtype: it decodes bfloat16 and replies in it
    payload = coordinator.serialize(FIRST)
    full = bytes(plain.serialize(FIRST))
    assert len(bytes(payload)) < 0.6 * len(full)  # bfloat16: about half the bytes of float32
    device.check(payload, FIRST)
    device.receive(payload, FIRST)
    sent = {k: v.copy() for k, v in coordinator.get_arrays().items()}
    for key, value in device.get_arrays().items():
        # bfloat16 keeps 8 bits of mantissa: within 2**-8 relative of what was sent
        np.testing.assert_allclose(value, sent[key], rtol=2**-8, atol=0)
        assert value.dtype == sent[key].dtype
    coordinator.merge([device.serialize(FIRST)], FIRST)
    for key, value in coordinator.get_arrays().items():
        np.testing.assert_array_equal(value, device.get_arrays()[key])  # bfloat16 values travel back exactly
    assert coordinator.last_merge["samples"] == 10
