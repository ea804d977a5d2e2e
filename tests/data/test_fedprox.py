"""FedProx on the device side (issue #12, point 4): ``fed.proximal_term(mu)``.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020): each
device adds ``mu/2 * ||w - w_global||^2`` to its local loss. The term's value and
gradient are checked against that formula, and over real HTTP a device's update
shrinks toward the global model as ``mu`` grows.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, Federated

ROOT = Path(__file__).resolve().parents[2]


def payload_of(data) -> bytes:
    return bytes(memoryview(b"".join(bytes(memoryview(f).cast("B")) for f in data.serialize(1).frames)))


def test_numpy_proximal_term_is_half_mu_times_the_squared_distance_to_what_was_received():
    start = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64), "n": np.array([3], np.int64)}
    coordinator = FedArrays({k: v.copy() for k, v in start.items()})
    buffer = bytearray(payload_of(coordinator))
    seen = {}

    def train(model):
        model["w"] += 0.5
        model["b"] -= 2.0
        model["n"] += 100  # integers have no gradient: not part of the term
        seen["term"] = fed.proximal_term(0.3)
        return 1

    fed = FedArrays({k: np.zeros_like(v) for k, v in start.items()}, train)
    fed.receive(memoryview(buffer), 1)
    assert seen["term"] == pytest.approx(0.5 * 0.3 * (6 * 0.25 + 2 * 4.0), rel=1e-12)
    # A copy, not a view of the payload: the device reuses that buffer for the next round.
    buffer[:] = bytes(len(buffer))
    assert fed.proximal_term(0.3) == pytest.approx(seen["term"], rel=1e-12)
    assert set(fed.global_arrays) == {"w", "b"}
    assert fed.proximal_term(0) == 0.0


@pytest.mark.parametrize("mu", [-1.0, math.nan, math.inf, "0.1", True, None])
def test_a_bad_mu_is_refused(mu):
    fed = FedArrays({"w": np.zeros(2)}, lambda model: 1)
    fed.receive(payload_of(FedArrays({"w": np.ones(2)})), 1)
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        fed.proximal_term(mu)


def test_the_term_needs_a_round_first():
    with pytest.raises(RuntimeError, match="inside train"):
        FedArrays({"w": np.zeros(2)}).proximal_term(0.1)


def test_torch_proximal_term_is_differentiable_with_gradient_mu_times_the_drift():
    torch = pytest.importorskip("torch")
    from fedsync_torch import FedTorch

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))

    coordinator = FedTorch(model())
    drift = {}

    def train(net, config):
        with torch.no_grad():
            for name, p in net.named_parameters():
                drift[name] = torch.randn_like(p)
                p.add_(drift[name])
        net[2].weight.requires_grad_(False)  # frozen: not in the term
        term = fed.proximal_term(config["mu"])
        term.backward()
        drift["term"] = term
        return 1

    fed = FedTorch(model(), train)
    with torch.no_grad():
        for p in fed.model.parameters():
            p.mul_(-3.0)  # the device's own weights differ from what it receives
    fed.receive(payload_of(coordinator), 1, {"mu": 0.7})
    trainable = [name for name, p in fed.model.named_parameters() if p.requires_grad]
    expected = 0.5 * 0.7 * sum(float((drift[n].double() ** 2).sum()) for n in trainable)
    assert drift["term"].item() == pytest.approx(expected, rel=1e-5)
    for name, p in fed.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, 0.7 * drift[name])
        else:
            assert p.grad is None


@pytest.mark.slow
def test_keras_proximal_term_has_gradient_mu_times_the_drift_under_a_gradient_tape():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tape below is TensorFlow's")
    import tensorflow as tf

    from fedsync_keras import FedKeras

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dense(2)])

    seen = {}

    def train(net, config):
        seen["drift"] = []
        for v in net.trainable_weights:
            step = np.random.default_rng(len(seen["drift"])).normal(size=v.shape).astype(np.float32)
            v.assign(v + step)
            seen["drift"].append(step)
        with tf.GradientTape() as tape:
            term = fed.proximal_term(config["mu"])
        seen["term"] = float(term)
        seen["grads"] = [g.numpy() for g in tape.gradient(term, net.trainable_weights)]
        return 1

    fed = FedKeras(model(), train)
    fed.receive(payload_of(FedKeras(model())), 1, {"mu": 0.4})
    assert seen["term"] == pytest.approx(0.5 * 0.4 * sum(float((d.astype(np.float64) ** 2).sum()) for d in seen["drift"]), rel=1e-5)
    for grad, drift in zip(seen["grads"], seen["drift"]):
        np.testing.assert_allclose(grad, 0.4 * drift, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_device_updates_shrink_toward_the_global_model_as_mu_grows(devices):
    torch = pytest.importorskip("torch")
    from fedsync_torch import FedTorch

    device = devices("tests.support.devices.config:torch_fedprox", 0)
    torch.manual_seed(0)
    data = FedTorch(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)))
    start = {name: a.copy() for name, a in data.get_arrays().items()}
    mus = [0.0, 0.1, 1.0, 10.0]
    distances = []
    # Each round starts from the same global model; with one device, the merge is its update.
    with Federated(data, [device.url], config=lambda rnd: {"mu": mus[rnd - 1], "epochs": 3, "lr": 0.05}) as alg:
        for _ in mus:
            data.set_arrays(start)
            alg.round()
            distances.append(math.sqrt(sum(float(((data.get_arrays()[n] - start[n]) ** 2).sum()) for n in start)))
    assert all(far > near for far, near in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.5 * distances[0], distances


@pytest.mark.slow
def test_the_fedprox_example_runs():
    pytest.importorskip("torch")
    # This checkout's fedsync, whatever fedsync is installed: the example uses its newest API.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "examples/run.py", "torch_fedprox"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = [line for line in done.stdout.splitlines() if line.startswith("round 10:")]
    assert last and float(last[-1].split("test accuracy ")[1].split()[0]) >= 0.8, done.stdout


def test_a_device_that_never_asks_for_the_global_weights_pays_no_copy():
    fed = FedArrays({"w": np.zeros(4, np.float32)}, lambda model: 1)
    fed.receive(payload_of(FedArrays({"w": np.ones(4, np.float32)})), 1)
    assert fed.global_arrays is None  # no model copy on a device that does not use FedProx
    with pytest.raises(RuntimeError, match="inside train"):
        fed.proximal_term(0.1)  # after train the payload is gone: the term is for train to call
    eager = FedArrays({"w": np.zeros(4, np.float32)}, lambda model: 1)
    eager.keep_global = True
    eager.receive(payload_of(FedArrays({"w": np.ones(4, np.float32)})), 1)
    assert eager.global_weights()["w"].tolist() == [1.0] * 4
