"""Several FedData types in one deployment: named bases, and bundles in one round."""

import numpy as np
import pytest
import requests

from fedsync import FedArrays, FedBundle, Federated, Remote, plugins
from fedsync.errors import CodecError, PayloadRejected
from tests.support.seed_fedfloat import FedFloat


def weights():
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def test_one_device_process_serves_two_types_under_named_bases(devices):
    a = devices("mixed", 1.0, 30, 0.2)
    b = devices("mixed", 4.0, 10, 0.6)
    model, threshold = weights(), FedFloat(0.0)
    with Federated(data=model, remotes=[Remote(a.url + "/weights"), Remote(b.url + "/weights")]) as models, \
         Federated(data=threshold, remotes=[Remote(a.url + "/threshold"), Remote(b.url + "/threshold")]) as thresholds:
        models.round()
        thresholds.round()
    assert np.all(model.model["w"] == 1.75)
    assert threshold.value == pytest.approx(0.4)
    assert requests.get(a.url + "/info", timeout=5).json()["bases"] == ["weights", "threshold"]


def test_bundle_carries_a_model_and_a_custom_fed_data_in_one_round(devices):
    a = devices("bundle", 1.0, 30, 0.2)
    b = devices("bundle", 4.0, 10, 0.6)
    data = FedBundle({"weights": weights(), "threshold": FedFloat(0.0)})
    info = Remote(a.url).info()
    assert info["specs"] == data.specs(1) and plugins.adapter_for(info["specs"]) is FedBundle
    assert info["summary"]["parts"]["threshold"]["specs"] == "Float"
    with Federated(data=data, remotes=[a.url, b.url]) as alg:
        alg.round()
        assert np.all(data["weights"].model["w"] == 1.75)
        assert data["threshold"].value == pytest.approx(0.4)  # FIRST: devices keep their own
        alg.round()
    assert data["threshold"].value == pytest.approx(0.4)


def test_bundle_rejects_a_payload_whose_part_differs_and_changes_nothing():
    ours = FedBundle({"weights": weights(), "threshold": FedFloat(0.5)})
    other = FedBundle({"weights": FedArrays({"w": np.ones((3, 3), np.float32), "b": np.ones(2, np.float32)}), "threshold": FedFloat(0.5)})
    with pytest.raises(PayloadRejected, match="part 'weights'"):
        ours.receive(other.serialize(2), 2)
    assert np.all(ours["weights"].model["w"] == 0.0)
    with pytest.raises(CodecError, match="exceeds HEADER_LIMIT"):  # the text's first 8 bytes read as a length
        ours.check(b"not a bundle", 2)
    assert np.all(ours["weights"].model["w"] == 0.0)


def test_bundle_part_must_be_the_registered_adapter_for_its_token():
    class Impostor(FedFloat):
        def specs(self, repetition):
            return "arrays:sha256:0000000000000000"

    bundle = FedBundle({"x": Impostor(1.0)})
    with pytest.raises(PayloadRejected, match="registered to FedArrays"):
        bundle.check(bundle.serialize(1), 1)


@pytest.mark.slow
def test_torch_model_and_custom_fed_data_in_one_deployment(devices):
    torch = pytest.importorskip("torch")
    from fedsync_torch import FedTorch
    from tests.support.devices.torch_models import mlp

    torch.set_num_threads(1)
    a = devices("tests.support.devices.torch_models:digits_and_threshold", "a", 0.2)
    b = devices("tests.support.devices.torch_models:digits_and_threshold", "b", 0.6)
    model, threshold = FedTorch(mlp(), None), FedFloat(0.0)
    info = Remote(a.url + "/digits").info()
    assert plugins.adapter_for(info["specs"]) is FedTorch
    with Federated(data=model, remotes=[a.url + "/digits", b.url + "/digits"]) as models, \
         Federated(data=threshold, remotes=[a.url + "/threshold", b.url + "/threshold"]) as thresholds:
        trained = models.round()
        thresholds.round()
    from tests.support.devices.torch_models import digits_split

    assert trained.samples == sum(len(y) for name, (_, y) in digits_split()[0].items() if name in ("a", "b"))
    assert threshold.value == pytest.approx(0.4)


@pytest.mark.slow
def test_bundle_of_torch_model_and_custom_fed_data_resolves_parts_through_the_registry(devices):
    torch = pytest.importorskip("torch")
    from fedsync_torch import FedTorch
    from tests.support.devices.torch_models import mlp

    torch.set_num_threads(1)
    a = devices("tests.support.devices.torch_models:digits_bundle", "a", 0.2)
    b = devices("tests.support.devices.torch_models:digits_bundle", "b", 0.6)
    data = FedBundle({"digits": FedTorch(mlp(), None), "threshold": FedFloat(0.0)})
    parts = Remote(a.url).info()["summary"]["parts"]
    assert plugins.adapter_for(parts["digits"]["specs"]) is FedTorch
    before = data["digits"].get_arrays()["0.weight"].copy()
    with Federated(data=data, remotes=[a.url, b.url]) as alg:
        alg.round()
    assert not np.array_equal(data["digits"].get_arrays()["0.weight"], before)
    from tests.support.devices.torch_models import digits_split

    assert data["digits"].last_merge["samples"] == sum(len(y) for name, (_, y) in digits_split()[0].items() if name in ("a", "b"))
    assert data["threshold"].value == pytest.approx(0.4)


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_bundle_with_malformed_parts_metadata_is_refused_even_under_python_dash_o():
    """The check is real code, not an assert that `python -O` would remove."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import numpy as np
from fedsync import FedArrays, FedBundle
from fedsync.wire import codec
from fedsync.data.bundle import PARTS_KEY
from fedsync.errors import PayloadRejected
from tests.support.seed_fedfloat import FedFloat
bundle = FedBundle({"weights": FedArrays({"w": np.zeros(2, np.float32)}), "threshold": FedFloat(0.5)})
arrays, metadata = codec.decode(bytes(bundle.serialize(1)))
for parts in ['["weights", "threshold"]', '{"weights": 1, "threshold": 2}', "not json", "[" * 100000]:
    metadata[PARTS_KEY] = parts
    try:
        bundle.check(codec.encode(arrays, metadata), 1)
        print("accepted", parts[:20])
    except PayloadRejected as exc:
        print("refused:", str(exc)[:40])
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert done.stdout.splitlines() == ["refused: bundle payload has no valid 'fedsync.par"] * 4, (done.stdout, done.stderr[-2000:])


def _bundle_reply(w, weight_samples, x_samples):
    """A device's bundle reply: its arrays and sample counts per part."""
    model = FedArrays({"w": np.full((3, 2), w, np.float32), "b": np.zeros(2, np.float32)})
    other = FedArrays({"x": np.full(4, w, np.float64)})
    model.samples, other.samples = weight_samples, x_samples
    return FedBundle({"weights": model, "x": other}).serialize(2)


@pytest.mark.parametrize("strategy", ["FedAvg", "FedAdam"])
def test_bundle_whose_later_part_fails_to_merge_changes_no_part(strategy):
    from fedsync import strategies
    from fedsync.errors import RoundFailed

    model = weights()
    model.strategy = getattr(strategies, strategy)()
    data = FedBundle({"weights": model, "x": FedArrays({"x": np.zeros(4, np.float64)})})
    data.merge([_bundle_reply(1.0, 5, 3)], 2)  # a first round gives FedAdam moments to keep
    before_w = model.model["w"].copy()
    before_state = {k: v.copy() for k, v in model.strategy.state().items()}
    before_samples, before_x = model.samples, data["x"].model["x"].copy()
    # 'weights' merges fine; 'x' reports no samples on any device, so its merge fails
    with pytest.raises(RoundFailed, match="samples"):
        data.merge([_bundle_reply(3.0, 5, 0), _bundle_reply(5.0, 7, 0)], 3)
    assert np.array_equal(model.model["w"], before_w)
    assert model.samples == before_samples
    assert np.array_equal(data["x"].model["x"], before_x)
    state = model.strategy.state()
    assert state.keys() == before_state.keys() and (strategy == "FedAvg") == (not state)
    for k, v in before_state.items():
        assert np.array_equal(state[k], v), k
    # the bundle still merges normally afterwards
    data.merge([_bundle_reply(3.0, 5, 1)], 4)
    assert not np.array_equal(model.model["w"], before_w)
