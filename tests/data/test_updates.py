"""#25 item 2 and 3: devices reply their update (``updates="delta"``) or its top-k with error feedback.

The coordinator rebuilds ``x + update`` before any strategy sees a reply, so every strategy merges what it
merged before (within float rounding), and a hostile update is that device's failure alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator.simulation import run_simulation
from fedsync.errors import PayloadRejected
from fedsync.strategies import FedAdam, FedAvg, FedMedian, Scaffold
from tests.support.devices.compressing import scaffold_devices

DIM = 30


def least_squares(i: int):
    rng = np.random.default_rng(i)
    x = rng.standard_normal((40, DIM)).astype(np.float32)
    return x, (x @ np.linspace(-1, 1, DIM) + i).astype(np.float32)


def device(updates=None, top_k=None, strategy=None):
    def build(i: int) -> FedArrays:
        x, y = least_squares(i)

        def train(model):
            for _ in range(5):
                model["w"] -= np.float32(0.05) * x.T @ (x @ model["w"] - y) / np.float32(len(x))
            model["n"] += 1  # an integer array: it travels as a value, never as an update
            return len(x) + i

        arrays = {"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)}
        return FedArrays(arrays, train, updates=updates, top_k=top_k, strategy=strategy)

    return build


def run(build, strategy=None, rounds=4, **options):
    data = FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)}, strategy=strategy)
    history = run_simulation(build, 5, rounds, data=data, progress=False, seed=1, **options)
    assert not any(r.failures for r in history), [r.failures for r in history]
    return data, history


@pytest.mark.parametrize(
    "strategy", [FedAvg, lambda: FedAdam(eta=0.05), FedMedian], ids=["FedAvg", "FedAdam", "FedMedian"]
)
def test_updates_merge_to_the_model_weights_merge_to(strategy):
    plain, _ = run(device(), strategy())
    delta, _ = run(device("delta"), strategy())
    np.testing.assert_allclose(delta.model["w"], plain.model["w"], rtol=1e-5, atol=1e-6)
    assert delta.model["n"].tolist() == plain.model["n"].tolist() == [4]
    assert not np.allclose(plain.model["w"], 0)


def test_a_top_k_of_everything_is_the_delta_and_a_small_one_sends_fewer_bytes():
    delta, h_delta = run(device("delta"))
    everything, _ = run(device("topk", 1.0))
    np.testing.assert_allclose(everything.model["w"], delta.model["w"], rtol=1e-6, atol=1e-7)
    small, h_small = run(device("topk", 0.1), rounds=4)
    assert h_small[-1].bytes_received < h_delta[-1].bytes_received
    assert not np.allclose(small.model["w"], delta.model["w"])


@pytest.mark.parametrize("sparse", ["topk", "stc"])
def test_error_feedback_sends_everything_eventually_what_is_left_stays_in_the_residual(sparse):
    """Sent updates plus the residual add up to every update the device computed (nothing lost, nothing doubled)."""
    from fedsync.data._updates import RESIDUAL

    fed = device(sparse, 0.1)(0)
    coordinator = FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)})
    computed = np.zeros(DIM, np.float64)
    sent = np.zeros(DIM, np.float64)
    for rep in range(1, 6):
        payload = coordinator.serialize(rep)
        start = coordinator.model["w"].copy()
        fed.receive(payload, rep)
        computed += fed.model["w"].astype(np.float64) - start
        before = coordinator.model["w"].copy()
        coordinator.merge([fed.serialize(rep)], rep)
        sent += coordinator.model["w"].astype(np.float64) - before
        assert np.count_nonzero(coordinator.model["w"] - before) <= 3  # ceil(0.1 * 30)
    np.testing.assert_allclose(sent + fed.device_state()[RESIDUAL + "w"], computed, atol=1e-5)


@pytest.mark.parametrize("sparse", ["topk", "stc"])
def test_the_residual_is_the_devices_state_and_survives_a_rebuild(sparse):
    from fedsync.data._state import encode_state, restore_state

    fed = device(sparse, 0.2)(1)
    fed.receive(FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)}).serialize(1), 1)
    saved = encode_state(fed.device_state())
    again = device(sparse, 0.2)(1)
    restore_state(again, saved)
    np.testing.assert_array_equal(again.residuals["residual/w"], fed.residuals["residual/w"])
    assert np.count_nonzero(again.residuals["residual/w"]) > 0
    other = FedArrays({"w": np.zeros(DIM + 1, np.float32), "n": np.zeros(1, np.int64)}, updates=sparse)
    restore_state(other, saved)  # the model changed: its residual is reset, never applied to another model
    assert not other.residuals["residual/w"].any()


def test_updates_with_scaffold_keep_its_control_variates_as_values():
    results = []
    for updates in (None, "delta"):
        data = FedArrays({"w": np.zeros(DIM, np.float32)}, strategy=Scaffold(num_devices=5))
        run_simulation(scaffold_devices(updates), 5, 3, data=data, progress=False)
        results.append((data.model["w"].copy(), data.extra_arrays["scaffold.c/w"].copy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda fed: fed._update[1].update({"fedsync.delta": "yes"}), 'must be "1"'),
        (lambda fed: fed._update[0]["w"].fill(np.nan), "NaN or infinity"),
    ],
    ids=["bad-marker", "nan"],
)
def test_a_hostile_update_is_that_devices_failure_and_the_others_merge(tamper, message):
    def build(i):
        fed = device("delta")(i)
        if i == 2:
            honest = fed.receive

            def receive(encoding, repetition, config=None):
                honest(encoding, repetition, config)
                tamper(fed)

            fed.receive = receive
        return fed

    data = FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)})
    history = run_simulation(build, 4, 1, data=data, progress=False, min_results=3)
    assert list(history[0].failures) == ["local://device-2"] and message in history[0].failures["local://device-2"]
    alone = FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)})
    run_simulation(lambda i: device("delta")([0, 1, 3][i]), 3, 1, data=alone, progress=False)
    np.testing.assert_allclose(data.model["w"], alone.model["w"], rtol=1e-6)


def test_an_update_that_takes_the_model_past_its_dtype_is_refused_and_changes_nothing():
    coordinator = FedArrays({"w": np.full(DIM, 3e38, np.float32), "n": np.zeros(1, np.int64)})
    fed = FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)}, lambda model: 5, updates="delta")
    fed.receive(coordinator.serialize(1), 1)
    fed._update[0]["w"].fill(3e38)  # finite, but 3e38 + 3e38 is not a float32
    before = bytes(coordinator.serialize(1))
    with pytest.raises(PayloadRejected, match="beyond float32's range"):
        coordinator.merge([bytes(fed.serialize(1))], 1)
    assert bytes(coordinator.serialize(1)) == before


def test_a_coordinator_never_sends_updates_and_a_device_refuses_them():
    fed = device("delta")(0)
    fed.receive(FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)}).serialize(1), 1)
    reply = fed.serialize(1)
    with pytest.raises(PayloadRejected, match="a device's reply, not a model"):
        device()(1).receive(reply, 2)


@pytest.mark.parametrize(
    "updates, top_k, message",
    [
        ("deltas", None, "updates must be"),
        (None, 0.1, "give updates='topk'"),
        ("topk", 0, "top_k must be"),
        ("topk", 1.5, "top_k must be"),
        ("stc", 0, "top_k must be"),
        ("ternary", None, "'delta', 'topk' or 'stc'"),
    ],
)
def test_bad_update_options_are_refused_at_construction(updates, top_k, message):
    with pytest.raises(ValueError, match=message):
        FedArrays({"w": np.zeros(2)}, updates=updates, top_k=top_k)


def test_stc_trains_close_to_the_delta_in_fewer_bytes():
    """30 weights: the header is most of either reply (benchmarks/compression.py measures a CNN's)."""
    delta, h_delta = run(device("delta"), rounds=8)
    stc, h_stc = run(device("stc", 0.25), rounds=8)
    assert h_stc[-1].bytes_received < h_delta[-1].bytes_received
    x, y = least_squares(0)
    loss = {name: float(np.mean((x @ fed.model["w"] - y) ** 2)) for name, fed in (("delta", delta), ("stc", stc))}
    start = float(np.mean(y**2))
    assert loss["stc"] < start / 2 and loss["stc"] < 2 * loss["delta"], (start, loss)


def test_int4_both_ways_and_delta_replies_in_int4_train_close_to_float32_in_a_seventh_of_the_bytes():
    plain, h_plain = run(device())
    data = FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)}, wire_dtype="int4")
    history = run_simulation(device("delta"), 5, 4, data=data, progress=False, seed=1)
    assert not any(r.failures for r in history)
    # the model is 120 bytes: headers dominate, so compare the arrays' share, not the bodies
    np.testing.assert_allclose(data.model["w"], plain.model["w"], atol=0.05 * np.abs(plain.model["w"]).max())
    from fedsync.wire import codec

    sent, _ = codec.decode(bytes(data.serialize(1)))
    assert sent["w"].nbytes == 4 * 1 + (DIM + 1) // 2  # one block's float32 scale, then 4-bit codes


def test_a_coordinator_declared_with_updates_asks_devices_that_did_not_choose():
    """One place to choose a run's upload: devices without updates= follow the coordinator's request; a device that
    chose keeps its choice; the residual of an asked top-k lives in the device's state like a declared one's."""
    asked = FedArrays({"w": np.zeros(DIM, np.float32), "n": np.zeros(1, np.int64)}, updates="topk", top_k=0.1)
    history = run_simulation(device(), 5, 3, data=asked, progress=False, seed=1)
    assert not any(r.failures for r in history)
    declared, _ = run(device("topk", 0.1), rounds=3)  # the devices choosing it themselves
    plain, _ = run(device(), rounds=3)
    np.testing.assert_array_equal(asked.model["w"], declared.model["w"])  # the request was followed, bit for bit
    assert not np.allclose(asked.model["w"], plain.model["w"])
    fed = device()(0)
    fed.receive(asked.serialize(1), 1)
    assert fed._update[1]["fedsync.delta"] == "1" and np.count_nonzero(fed.residuals["residual/w"]) > 0
    assert "residual/w" in fed.device_state()
    chose = device("delta")(0)
    chose.receive(asked.serialize(1), 1)
    assert "fedsync.wire" not in chose._update[1]  # its own choice: dense updates


@pytest.mark.parametrize(
    "value", ['{"as": "sparse"}', '{"as": "topk", "top_k": 2}', "[1]", '{"as": "delta", "x": 1}', "x" * 300]
)
def test_a_malformed_request_is_refused_before_anything_changes(value):
    coordinator = FedArrays({"w": np.ones(DIM, np.float32), "n": np.zeros(1, np.int64)})
    arrays, metadata = codec_decode(coordinator.serialize(1))
    metadata["fedsync.updates"] = value
    fed = device()(0)
    with pytest.raises(PayloadRejected, match="fedsync.updates"):
        fed.check(codec_encode(arrays, metadata), 1)
    assert not fed.model["w"].any()


def codec_decode(payload):
    from fedsync.wire import codec

    arrays, metadata = codec.decode(bytes(payload))
    return dict(arrays), dict(metadata)


def codec_encode(arrays, metadata):
    from fedsync.wire import codec

    return codec.encode(arrays, metadata)


@pytest.mark.parametrize("sparse", ["topk", "stc"])
def test_a_sparse_payload_that_is_neither_an_update_nor_a_downloads_difference_is_refused(sparse):
    """topk and stc carry differences: as weights (no fedsync.delta) or as a whole model (no fedsync.base),
    zeros would stand for every entry not sent. Refused on both sides, and nothing changes."""
    from fedsync.wire import codec

    coordinator = FedArrays({"w": np.ones(DIM, np.float32), "n": np.zeros(1, np.int64)})
    fed = device(sparse, 0.2)(0)
    fed.receive(coordinator.serialize(1), 1)
    arrays, metadata = codec.decode(bytes(fed.serialize(1)))
    del metadata["fedsync.delta"]
    before = coordinator.model["w"].copy()
    with pytest.raises(PayloadRejected, match=r"array 'w' is packed sparse \(topk, stc\).*neither"):
        coordinator.merge([codec.encode(arrays, metadata)], 1)
    np.testing.assert_array_equal(coordinator.model["w"], before)

    sender = FedArrays({"w": np.ones(DIM, np.float32)}, download="stc" if sparse == "stc" else "delta",
                       download_top_k=0.2)  # fmt: skip
    receiver = FedArrays({"w": np.zeros(DIM, np.float32)}, lambda model: 1)
    receiver.receive(sender.views.payload(sender, None, 1, None)[0], 1)
    sender.model["w"] += np.float32(0.5)
    arrays, metadata = codec.decode(bytes(sender.views.payload(sender, receiver.view[0], 2, sparse)[0]))
    del metadata["fedsync.base"]
    with pytest.raises(PayloadRejected, match="packed sparse"):
        receiver.check(codec.encode(arrays, metadata), 2)
    np.testing.assert_array_equal(receiver.model["w"], 1.0)
