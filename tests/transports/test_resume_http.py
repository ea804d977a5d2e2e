"""Transfers that resume over direct HTTP: a real TCP connection cut part-way between the coordinator and a device.

docs/protocol.md, "Transfers that resume": a result download continues with ``Range: bytes=N-`` into the
merge's running sum, a submission with ``HEAD``/``POST Upload-Offset``; the model stays exact, the bytes
re-sent are counted, and a device whose connection keeps breaking fails alone.
"""

import logging

import numpy as np
import pytest

import fedsync
from fedsync.data import FedArrays
from fedsync.transports.remote import Remote
from tests.support.devices.resume import N, start_values
from tests.support.processes import start_device, stop_all
from tests.support.proxy import CuttingProxy

PAYLOAD = 4 * N  # bytes of the float32 model, each way (plus a small safetensors header)


@pytest.fixture(scope="module")
def devices():
    """Two devices: training adds 1.0 (behind the proxy) and 3.0 to the weights they received."""
    started = [
        start_device("tests.support.devices.resume:plus", 1.0),
        start_device("tests.support.devices.resume:plus", 3.0),
    ]
    yield started
    stop_all(started)


def one_round(devices, proxy, **options):
    coordinator = FedArrays({"w": start_values()})
    remotes = [Remote(proxy.url), Remote(devices[1].url)]
    with fedsync.Federated(data=coordinator, remotes=remotes, timeout=30, **options) as alg:
        result = alg.round()
    return result, coordinator.model["w"], remotes[0]


@pytest.mark.slow  # ~1.4 s: keeps the fast tier under 90 s
@pytest.mark.parametrize("direction", ["down", "up"])
def test_a_transfer_cut_at_half_resumes_and_the_model_is_exact(devices, direction, caplog):
    caplog.set_level(logging.INFO, logger="fedsync")
    with CuttingProxy(devices[0].url, direction=direction, after=PAYLOAD // 2, times=1) as proxy:
        result, merged, remote = one_round(devices, proxy)
    assert result.failures == {} and sorted(result.answered) == sorted([proxy.url, devices[1].url])
    assert np.array_equal(merged, start_values() + 2)  # (received + 1 and received + 3) / 2, every byte in place
    assert proxy.cuts == 1 and remote.resumes.count >= 1
    # On the wire: about one payload reached the device's side. Bytes still in flight at the break (in the
    # device's socket buffers when the connection died) may cross again: well under the payload, not zero.
    assert proxy.forwarded[direction] < PAYLOAD + PAYLOAD // 16
    what = "result" if direction == "down" else "submission"
    assert f"{proxy.url}: resumed the {what} of repetition" in caplog.text
    if direction == "down":
        assert remote.resent_bytes == 0  # Range honoured: no byte read twice
    else:  # what the coordinator handed over again: at most what its kernel still buffered at the break
        assert 0 <= remote.resent_bytes < PAYLOAD // 2


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
@pytest.mark.parametrize("direction", ["down", "up"])
def test_a_device_whose_connection_keeps_breaking_fails_alone(devices, direction):
    with CuttingProxy(devices[0].url, direction=direction, after=256 * 1024, times=None) as proxy:
        result, merged, remote = one_round(devices, proxy, min_results=1)
    assert result.answered == [devices[1].url] and list(result.failures) == [proxy.url]
    assert np.array_equal(merged, start_values() + 3)
    assert remote.resumes.count >= 1 and proxy.cuts > 1


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_the_next_round_after_a_resumed_one_is_whole(devices):
    with CuttingProxy(devices[0].url, direction="down", after=PAYLOAD // 3, times=1) as proxy:
        coordinator = FedArrays({"w": start_values()})
        remotes = [Remote(proxy.url), Remote(devices[1].url)]
        with fedsync.Federated(data=coordinator, remotes=remotes, timeout=30) as alg:
            first, second = alg.round(), alg.round()
    assert first.failures == {} and second.failures == {}
    assert np.array_equal(coordinator.model["w"], start_values() + 4)
    assert proxy.cuts == 1 and remotes[0].resumes.count == 1
