"""Review of STC replies (#25): error feedback in float16 and float32 across rounds, a coordinator asking devices for
stc, and the strategies that merge stc replies (each rebuilt into weights before the strategy sees it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.coordinator.simulation import run_simulation
from fedsync.data._updates import RESIDUAL
from fedsync.strategies import FedAdam, FedMedian, Krum, Scaffold
from fedsync.wire import codec

DIM = 30


def least_squares(i: int, dtype=np.float32):
    rng = np.random.default_rng(i)
    x = rng.standard_normal((40, DIM)).astype(dtype)
    return x, (x @ np.linspace(-1, 1, DIM) + i).astype(dtype)


def device(updates=None, top_k=None, dtype=np.float32, strategy=None):
    def build(i: int) -> FedArrays:
        x, y = least_squares(i, dtype)

        def train(model):
            for _ in range(5):
                model["w"] -= dtype(0.05) * x.T @ (x @ model["w"] - y) / dtype(len(x))
            return len(x)

        return FedArrays({"w": np.zeros(DIM, dtype)}, train, updates=updates, top_k=top_k, strategy=strategy)

    return build


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_what_was_sent_plus_the_residual_is_every_update_computed_over_twenty_rounds(dtype):
    """Error feedback loses nothing but the model dtype's rounding: after 20 rounds the gap is a few units in the
    last place of the model's values, not a drift (without the residual it would be the residual, ~0.1)."""
    fed = device("stc", 0.1, dtype)(0)
    coordinator = FedArrays({"w": np.zeros(DIM, dtype)})
    computed, sent = np.zeros(DIM), np.zeros(DIM)
    for rep in range(1, 21):
        start = coordinator.model["w"].astype(np.float64)
        fed.receive(coordinator.serialize(rep), rep)
        computed += fed.model["w"].astype(np.float64) - start
        reply = fed.serialize(rep)
        assert json.loads(codec.decode(bytes(reply))[1]["fedsync.wire"])["w"]["as"] == "stc"
        coordinator.merge([reply], rep)
        sent += coordinator.model["w"].astype(np.float64) - start
    residual = fed.device_state()[RESIDUAL + "w"]
    assert residual.dtype == dtype and np.abs(residual).max() > 0.01  # something is still owed
    ulp = float(np.spacing(dtype(np.abs(computed).max())))
    np.testing.assert_allclose(sent + residual.astype(np.float64), computed, rtol=0, atol=4 * ulp)


def test_a_coordinator_asking_for_stc_gets_what_devices_choosing_it_send_bit_for_bit():
    asked = FedArrays({"w": np.zeros(DIM, np.float32)}, updates="stc", top_k=0.1)
    history = run_simulation(device(), 5, 3, data=asked, progress=False, seed=1)
    assert not any(r.failures for r in history)
    declared = FedArrays({"w": np.zeros(DIM, np.float32)})
    run_simulation(device("stc", 0.1), 5, 3, data=declared, progress=False, seed=1)
    np.testing.assert_array_equal(asked.model["w"], declared.model["w"])
    fed = device()(0)
    fed.receive(asked.serialize(1), 1)
    wire = json.loads(fed._update[1]["fedsync.wire"])
    assert wire["w"]["as"] == "stc" and np.count_nonzero(fed.residuals["residual/w"]) > 0
    assert "residual/w" in fed.device_state()  # the asked residual is state, as a declared one


@pytest.mark.parametrize(
    "strategy",
    [FedMedian, lambda: FedAdam(eta=0.05), lambda: Krum(num_malicious_clients=1)],
    ids=["FedMedian", "FedAdam", "Krum"],
)
def test_robust_strategies_and_server_optimizers_merge_stc_replies_and_train(strategy):
    data = FedArrays({"w": np.zeros(DIM, np.float32)}, strategy=strategy())
    history = run_simulation(device("stc", 0.2), 5, 6, data=data, progress=False, seed=1)
    assert not any(r.failures for r in history)
    x, y = least_squares(0)
    loss = float(np.mean((x @ data.model["w"] - y) ** 2))
    assert loss < float(np.mean(y**2)) / 2, loss


def test_scaffold_with_stc_sends_its_control_variates_as_values():
    from tests.support.devices.compressing import scaffold_devices

    make = scaffold_devices("stc")
    fed = make(0)
    fed.receive(FedArrays({"w": np.zeros(DIM, np.float32)}, strategy=Scaffold(num_devices=5)).serialize(1), 1)
    wire = json.loads(fed._update[1]["fedsync.wire"])
    assert set(wire) == {"w"}  # scaffold.c/w travels as a value, never sparsified
    data = FedArrays({"w": np.zeros(DIM, np.float32)}, strategy=Scaffold(num_devices=5))
    history = run_simulation(make, 5, 3, data=data, progress=False)
    assert not any(r.failures for r in history) and np.abs(data.extra_arrays["scaffold.c/w"]).max() > 0


def _three_rounds(serve_first: dict | None, serve_second: dict | None, restart: bool) -> np.ndarray:
    """Three rounds with one device process replying stc (top_k 0.1), restarted after round 2 if ``restart``."""
    from tests.support.processes import start_device, stop_all

    factory, args = "tests.support.devices.compressing:least_squares", (0, "stc", 0.1)
    data = FedArrays({"w": np.zeros(DIM, np.float32)})
    first = start_device(factory, *args, serve=serve_first)
    try:
        with Federated(data, [first.url], timeout=60) as alg:
            for _ in range(3 if not restart else 2):
                assert not alg.round().failures
        if not restart:
            return data.model["w"].copy()
    finally:
        stop_all([first])
    second = start_device(factory, *args, serve=serve_second)
    try:
        with Federated(data, [second.url], timeout=60) as alg:
            assert not alg.round().failures
    finally:
        stop_all([second])
    return data.model["w"].copy()


@pytest.mark.slow  # five device processes
def test_the_residual_survives_a_restart_with_a_state_dir_over_http(tmp_path):
    """With serve(state_dir=...), a restarted device sends what the uninterrupted one would have, bit for bit;
    without one it starts from a zero residual and sends something else (so the residual is what travelled)."""
    kept = {"state_dir": str(tmp_path)}
    uninterrupted = _three_rounds(None, None, restart=False)
    resumed = _three_rounds(kept, kept, restart=True)
    forgotten = _three_rounds(None, None, restart=True)
    np.testing.assert_array_equal(resumed, uninterrupted)
    assert not np.array_equal(forgotten, uninterrupted)
