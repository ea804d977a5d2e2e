"""#25 item 3, the download: the coordinator sends the model as a delta from a view the device holds.

Both sides compute the same view (what the device loaded, after the lossy format) and name it by its sha256;
a device that lost its view (a restart) answers 409 unknown_base and gets the whole model in the same round.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.coordinator.simulation import run_simulation
from fedsync.errors import PayloadRejected, UnknownBase
from fedsync.transports.local import LocalRemote
from fedsync.wire import codec

N = 4000


def nudging(seen: list):
    """A device that records the model it loaded, then moves every weight by 0.01."""

    def train(model):
        seen.append(model["w"].copy())
        model["w"] += np.float32(0.01)
        return 5

    return FedArrays({"w": np.zeros(N, np.float32)}, train)


def coordinator(**options) -> FedArrays:
    return FedArrays({"w": np.random.default_rng(0).standard_normal(N).astype(np.float32)}, **options)


def test_both_sides_hold_the_same_view_and_later_downloads_are_deltas():
    data = coordinator(wire_dtype="int8", download="delta", download_top_k=0.05)
    seen: list = []
    device = nudging(seen)
    sizes = []
    with Federated(data, [LocalRemote("local://d", device=device)]) as alg:
        for _ in range(4):
            x = data.model["w"].copy()
            result = alg.round()
            assert not result.failures
            sizes.append(result.bytes_sent)
            assert alg._handshakes.held["local://d"] == device.view[0]  # the coordinator knows what it holds
            np.testing.assert_array_equal(seen[-1], device.view[1]["w"])  # it trained from its view
            # int8, then 5 % of each difference: the view lags the model by int8's error and the nudges not sent
            assert np.abs(seen[-1] - x).max() <= np.abs(x).max() / 254 + 0.01 * len(sizes) + 1e-6
    assert sizes[0] > 4 * N * 0.2  # the whole model in int8
    assert all(s < sizes[0] / 2 for s in sizes[1:])  # 5 % of the entries, 8 bytes each


def test_an_stc_download_is_a_delta_both_sides_hold_and_what_it_leaves_comes_later():
    data = coordinator(wire_dtype="float16", download="stc", download_top_k=0.05)
    seen: list = []
    device = nudging(seen)
    sizes = []
    with Federated(data, [LocalRemote("local://d", device=device)]) as alg:
        for _ in range(6):
            result = alg.round()
            assert not result.failures
            sizes.append(result.bytes_sent)
            assert alg._handshakes.held["local://d"] == device.view[0]
            np.testing.assert_array_equal(seen[-1], device.view[1]["w"])  # it trained from its view
    _, metadata = codec.decode(bytes(data.views.payload(data, device.view[0], 7, "stc")[0]))
    assert '"as":"stc"' in metadata["fedsync.wire"] and metadata["fedsync.base"] == device.view[0]
    assert all(s < N / 4 for s in sizes[1:]) and sizes[0] > 2 * N  # a bitmap and signs; the first, float16
    # What the download left out is still owed: the view's distance to the model does not grow with the rounds.
    gap = np.abs(data.model["w"] - device.view[1]["w"]).max()
    assert gap < 0.1, gap


def test_the_download_as_delta_trains_what_the_whole_download_trains_within_the_formats_error():
    runs = {}
    for download in (None, "delta"):  # both ask updates (download="delta" alone would): only the download differs
        data = coordinator(wire_dtype="int4", download=download, updates="delta")
        history = run_simulation(lambda i: nudging([]), 3, 4, data=data, progress=False)  # rebuilt: the view in state
        assert not any(r.failures for r in history)
        runs[download] = data.model["w"].copy()
    np.testing.assert_allclose(runs["delta"], runs[None], atol=0.3)  # int4 of a N(0, 1) model: block max / 14


@pytest.mark.slow  # three device processes, one after another, on one port
def test_a_restarted_device_gets_the_whole_model_in_the_same_round_and_nobody_fails():
    from tests.support.processes import start_device, stop_all

    data = FedArrays(
        {"w": np.full((3, 2), 0.5, np.float32), "b": np.zeros(2, np.float32)}, wire_dtype="int8", download="delta"
    )
    first = start_device("tests.support.devices.basic:constant", 1.0, 10)
    port = int(first.url.rsplit(":", 1)[1].rstrip("/"))
    try:
        with Federated(data, [first.url]) as alg:
            assert not alg.round().failures  # whole model, the device keeps its view
            assert alg._handshakes.held
            stop_all([first])
            second = start_device("tests.support.devices.basic:constant", 2.0, 10, port=port)
            try:
                result = alg.round()  # a delta from a view the new process never had: 409, then the whole model
                assert not result.failures
                np.testing.assert_allclose(data.model["w"], 2.0)
            finally:
                stop_all([second])
    finally:
        stop_all([first])


def test_a_device_without_the_base_refuses_with_unknown_base_and_changes_nothing():
    data = coordinator(download="delta")
    device = nudging([])
    payload, _ = data.views.payload(data, None, 1, None)
    device.receive(payload, 1)
    delta, _ = data.views.payload(data, device.view[0], 2, None)
    stranger = nudging([])
    with pytest.raises(UnknownBase, match="holds no view"):
        stranger.check(delta, 2)
    assert stranger.view is None and not stranger.model["w"].any()
    arrays, metadata = codec.decode(bytes(delta))
    metadata["fedsync.base"] = "sha256:zz"
    with pytest.raises(PayloadRejected, match="64 hex digits"):
        device.check(codec.encode(arrays, metadata), 2)


def test_a_saved_view_comes_back_with_the_state_and_a_damaged_one_is_refused():
    from fedsync.data._state import encode_state, restore_state

    data = coordinator(download="delta")
    device = nudging([])
    device.receive(data.views.payload(data, None, 1, None)[0], 1)
    saved = device.device_state()
    fresh = nudging([])
    restore_state(fresh, encode_state(saved))
    assert fresh.view[0] == device.view[0]
    damaged = dict(saved)
    damaged["view/w"] = damaged["view/w"] + np.float32(1)
    with pytest.raises(ValueError, match="does not match its id"):
        restore_state(nudging([]), encode_state(damaged))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"download": "full"}, "download must be"),
        ({"download_top_k": 0.1}, "give download='delta'"),
        ({"download": "delta", "download_top_k": 2}, "top_k must be"),
        ({"download": "stc", "download_top_k": 0}, "top_k must be"),
        ({"download": "ternary"}, "'delta' or 'stc'"),
    ],
)
def test_bad_download_options_are_refused_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        FedArrays({"w": np.zeros(2)}, **options)


@pytest.mark.parametrize("download", ["delta", "stc"])
def test_secure_aggregation_refuses_a_download_as_delta(download):
    from fedsync.secagg import SecAgg
    from fedsync.secagg.coordinator import checked

    with pytest.raises(ValueError, match="download"):
        checked(SecAgg(threshold=3), coordinator(download=download))


def test_a_view_saved_for_another_model_is_dropped_not_applied():
    from fedsync.data._state import encode_state, restore_state

    data = coordinator(download="delta")
    device = nudging([])
    device.receive(data.views.payload(data, None, 1, None)[0], 1)
    other = FedArrays({"w": np.zeros(N + 1, np.float32)})
    restore_state(other, encode_state(device.device_state()))
    assert other.view is None  # the next download is the whole model


def test_a_coordinator_with_a_delta_download_asks_for_updates_so_the_download_loses_nothing():
    """Replying weights, a device would reply the lossy view it trained from, and what the download left out
    would be lost; asked for updates, the coordinator adds them to its own model, which keeps it."""
    data = coordinator(download="stc", download_top_k=0.01)  # 1 % of each difference a round
    device = nudging([])
    start = data.model["w"].copy()
    with Federated(data, [LocalRemote("local://d", device=device)]) as alg:
        for _ in range(3):
            assert not alg.round().failures
    np.testing.assert_allclose(data.model["w"], start + np.float32(0.03), atol=1e-5)  # every nudge kept
    assert np.abs(device.view[1]["w"] - data.model["w"]).max() > 0.01  # though the device's view lags behind


@pytest.mark.parametrize("download", ["delta", "stc"])
def test_a_device_unpacks_a_payload_once_for_check_and_receive(monkeypatch, download):
    """check (before accepting) and receive (to train) read the same payload: it is unpacked once, and
    the device loads what a receive alone would load."""
    from fedsync.wire import compression

    data = coordinator(wire_dtype="int4", download=download, download_top_k=0.1)
    device, alone = nudging([]), nudging([])
    for fed in (device, alone):
        fed.receive(data.views.payload(data, None, 1, None)[0], 1)
    data.model["w"] += np.float32(0.25)
    payload, _ = data.views.payload(data, device.view[0], 2, "stc" if download == "stc" else None)
    calls = []
    unpack = compression.unpack
    monkeypatch.setattr(compression, "unpack", lambda *a, **k: calls.append(1) or unpack(*a, **k))
    device.check(payload, 2)
    device.receive(payload, 2)
    assert len(calls) == 1
    alone.receive(payload, 2)
    np.testing.assert_array_equal(device.model["w"], alone.model["w"])
    assert device.view[0] == alone.view[0] and device._last_check is None  # nothing held after receive


def test_a_coordinators_payloads_ask_for_updates_and_its_replies_as_an_aggregator_ask_nothing():
    data = coordinator(download="delta")
    _, metadata = codec.decode(bytes(data.serialize(1)))
    assert json.loads(metadata["fedsync.updates"]) == {"as": "delta"}
    reply = data.serialize_arrays(1, data._shared_part(data.get_arrays()), None, {"fedsync.delta": "1"})
    assert "fedsync.updates" not in codec.decode(bytes(reply))[1]  # an aggregator's merge replied as an update
