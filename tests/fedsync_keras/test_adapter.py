"""FedKeras: the seed README's Keras example across real device processes, and what makes it safe."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fedsync import Federated, Remote
from fedsync.errors import PayloadRejected, SpecsMismatch
from fedsync_keras import FedKeras
from tests.support.processes import ROOT, start_device
from tests.support.devices.keras_models import digits_model, digits_split, small_model

# keras is imported by the tests that use it, so collecting the suite does not load TensorFlow.
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs the keras extra: pip install 'fedsync[keras]'"),
    # Keras's own convert_to_numpy calls np.array on tensors whose __array__ predates numpy 2.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


def start_together(start, *devices):
    """Start device processes concurrently: each spends seconds importing TensorFlow."""
    with ThreadPoolExecutor(len(devices)) as pool:
        return list(pool.map(lambda args: start(*args), devices))


@pytest.fixture(scope="module")
def constant_devices():
    """Two devices whose training sets every weight to 1.0 (30 samples) and 4.0 (10 samples)."""
    started = []

    def start(*args):
        device = start_device("tests.support.devices.keras_models:constant", *args)
        started.append(device)
        return device

    try:
        yield start_together(start, (1.0, 30), (4.0, 10))
    finally:
        for device in started:
            device.kill()


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0).argmax(axis=1) == y).mean())


@pytest.mark.slow
def test_seed_readme_keras_example_learns_digits_from_non_iid_devices(devices):
    # The devices serve tests.support.devices.keras_models:digits, the seed README's device code as written.
    a, b = start_together(devices, ("tests.support.devices.keras_models:digits", "A"), ("tests.support.devices.keras_models:digits", "B"))
    shards, (x_test, y_test) = digits_split()
    assert 0 < np.mean(shards["A"][1] >= 5) < 0.15  # mostly 0-4, a few of the others
    assert 0 < np.mean(shards["B"][1] < 5) < 0.15  # mostly 5-9

    from fedsync.data import FedKeras  # the seed README's import path

    model = digits_model()
    alg = Federated(data=FedKeras(model, None), remotes=[Remote(a.url), Remote(b.url)])
    before = accuracy(model, x_test, y_test)
    history = []
    for round in range(5):
        alg.round()
        history.append(accuracy(model, x_test, y_test))
    alg.close()

    assert before < 0.3
    assert history[-1] >= 0.85, history
    assert alg.data.last_merge["samples"] == len(shards["A"][0]) + len(shards["B"][0])


@pytest.mark.slow
def test_merge_weighs_every_weight_by_sample_count(constant_devices):
    data = FedKeras(small_model(), None)
    with Federated(data=data, remotes=[d.url for d in constant_devices]) as alg:
        alg.round()
    # (1.0 * 30 + 4.0 * 10) / 40, in BatchNormalization's moving statistics too
    assert list(data.get_arrays()) == [
        "0:Dense/kernel", "0:Dense/bias",
        "1:BatchNormalization/gamma", "1:BatchNormalization/beta",
        "1:BatchNormalization/moving_mean", "1:BatchNormalization/moving_variance",
        "2:Dense/kernel", "2:Dense/bias",
    ]  # fmt: skip
    assert all(np.all(a == 1.75) and a.dtype == np.float32 for a in data.get_arrays().values())
    assert data.last_merge["samples"] == 40 and data.last_merge["metrics"] == {"loss": 1.75}


@pytest.mark.slow
def test_specs_depend_on_the_declaration_not_on_keras_layer_names(constant_devices):
    import keras

    first, second = small_model(), small_model()
    assert first.layers[0].name != second.layers[0].name  # e.g. dense and dense_2
    specs = FedKeras(first, None).specs(1)
    assert specs.startswith("keras:sha256:")
    assert FedKeras(second, None).specs(1) == specs
    # The device process built other layers first, so its Keras names differ too.
    assert Remote(constant_devices[0].url).info()["specs"] == specs
    assert FedKeras(small_model(width=5), None).specs(1) != specs
    first.layers[0].trainable = False  # freezing layers while training changes nothing exchanged
    assert FedKeras(first, None).specs(1) == specs
    assert FedKeras(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)]), None).specs(1) != specs


@pytest.mark.slow
def test_coordinator_with_another_width_gets_specs_mismatch_before_sending(constant_devices):
    device = constant_devices[0]
    repetition = Remote(device.url).info()["repetition"]
    wrong = FedKeras(small_model(width=5), None)
    with Federated(data=wrong, remotes=[device.url]) as alg:
        with pytest.raises(SpecsMismatch) as caught:
            alg.round()
    message = str(caught.value)
    assert device.url in message
    assert "0:Dense/kernel: expected (3, 5) float32, device has (3, 4) float32" in message
    assert Remote(device.url).info()["repetition"] == repetition  # nothing was sent


@pytest.mark.slow
def test_payload_with_wrong_shapes_is_rejected_and_leaves_the_model_unchanged(constant_devices):
    data = FedKeras(small_model(), lambda model: pytest.fail("must not train on a rejected payload"))
    before = data.get_arrays()
    wrong = FedKeras(small_model(width=5), None).serialize(1)
    for attempt in (lambda: data.check(wrong, 1), lambda: data.receive(wrong, 1), lambda: data.merge([wrong], 1)):
        with pytest.raises(ValueError, match="0:Dense/kernel") as caught:
            attempt()
        assert isinstance(caught.value, PayloadRejected)
    for name, array in data.get_arrays().items():
        np.testing.assert_array_equal(array, before[name])

    # Over HTTP, with the right specs header: the device answers 400 before touching its model.
    device = constant_devices[0]
    with Remote(device.url) as remote:
        info = remote.info()
        with pytest.raises(PayloadRejected, match="0:Dense/kernel"):
            remote.submit(info["repetition"] + 1, wrong, info["specs"])
        assert remote.info()["repetition"] == info["repetition"]
        assert remote.info()["state"] == info["state"]


TORCH_COORDINATOR = """
import json, sys
import keras
from fedsync import Federated
from fedsync.data import FedKeras
from tests.support.devices.keras_models import small_model

data = FedKeras(small_model(), None)
specs = data.specs(1)
with Federated(data=data, remotes=sys.argv[1:]) as alg:
    alg.round()
values = sorted({float(v) for a in data.get_arrays().values() for v in a.ravel()})
print(json.dumps({"backend": keras.backend.backend(), "specs": specs, "values": values}))
"""


@pytest.mark.slow
def test_torch_backend_coordinator_federates_with_tensorflow_devices(constant_devices):
    pytest.importorskip("torch")
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", TORCH_COORDINATOR, *(d.url for d in constant_devices)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "torch"
    assert report["specs"] == FedKeras(small_model(), None).specs(1)
    assert report["values"] == [1.75]


@pytest.mark.slow
def test_weight_names_are_positions_in_nested_and_functional_models():
    import keras

    def declare(swap=False):
        inputs = keras.Input((4,))
        first, second = keras.layers.Dense(4), keras.layers.Dense(4)
        x = first(inputs)
        y = second(x)
        head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
        return keras.Model(inputs, head(keras.layers.Concatenate()([y, x] if swap else [x, y])))

    data = FedKeras(declare(), None)
    assert list(data.get_arrays()) == [
        "1:Dense/kernel", "1:Dense/bias",
        "2:Dense/kernel", "2:Dense/bias",
        "4:Sequential/0:Dense/kernel", "4:Sequential/0:Dense/bias",
        "4:Sequential/1:BatchNormalization/gamma", "4:Sequential/1:BatchNormalization/beta",
        "4:Sequential/1:BatchNormalization/moving_mean", "4:Sequential/1:BatchNormalization/moving_variance",
    ]  # 0 is the InputLayer, 3 the Concatenate
    assert FedKeras(declare(), None).specs(1) == data.specs(1)
    assert FedKeras(declare(swap=True), None).specs(1) != data.specs(1)  # same weights, other wiring


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_set_arrays_keeps_dtypes_and_a_model_without_weights_is_refused():
    import keras

    data = FedKeras(small_model(), None)
    data.set_arrays({name: np.full(a.shape, 2.5, a.dtype) for name, a in data.get_arrays().items()})
    assert all(str(v.dtype) == "float32" and np.all(keras.ops.convert_to_numpy(v) == 2.5) for v in data.model.weights)
    with pytest.raises(ValueError, match="keras.Input"):
        FedKeras(keras.Sequential([keras.layers.Dense(2)]), None)
    with pytest.raises(TypeError, match="Keras model"):
        FedKeras({"w": np.zeros(2)}, None)


def test_plugin_registers_keras_without_importing_it():
    code = (
        "import sys, pluggy, fedsync.plugins.hookspecs, fedsync_keras\n"
        "from fedsync.data import FedKeras\n"
        "pm = pluggy.PluginManager('fedsync'); pm.add_hookspecs(fedsync.plugins.hookspecs); pm.register(fedsync_keras)\n"
        "found = []; pm.hook.register_adapters(register=lambda token, cls: found.append((token, cls)))\n"
        "assert found == [('keras', FedKeras)], found\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_layout_matches_the_arrays_without_converting_them(monkeypatch):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    fed = FedKeras(model)
    expected = {name: (a.shape, a.dtype) for name, a in fed.get_arrays().items()}

    def converted(*args, **kwargs):
        raise AssertionError("layout() converted a variable's values")

    monkeypatch.setattr(FedKeras, "get_arrays", converted)
    monkeypatch.setattr(keras.ops, "convert_to_numpy", converted)
    assert fed.layout() == expected
