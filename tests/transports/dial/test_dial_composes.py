"""Dialed-in devices keep what the core promises when features compose (#20): secure aggregation
and central DP over dial:// remotes give the same result as over direct HTTP, and a dialed-in
device served with ``secure_aggregation="required"`` refuses a plain round, as a direct one does.

Real HTTP on loopback: the Listener in this process, each device a real dialer
(``fedsync.serve(..., connect=...)``) running its FedData in this process's threads.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("cryptography")

import fedsync  # noqa: E402
from fedsync import FedArrays, Federated  # noqa: E402
from fedsync.secagg import SecAgg  # noqa: E402
from fedsync.strategies import DPFixedClipping, FedAvg  # noqa: E402
from fedsync.transports.dial import Listener  # noqa: E402
from tests.support.devices.secagg import model, noisy  # noqa: E402
from tests.support.secagg import assert_within_quantization  # noqa: E402

NAMES = ("site-a", "site-b", "site-c")
TOKENS = {name: f"token-for-{name}" for name in NAMES}


@pytest.fixture
def dialed():
    """A Listener and three dialers of ``noisy`` devices (seeds 1-3, 10/20/30 samples); all closed after."""
    running = []
    with Listener("127.0.0.1", 0, devices=TOKENS) as listener:
        def start(**serve_options):
            for seed, name in enumerate(NAMES, start=1):
                running.append(
                    fedsync.serve(noisy(seed, 10 * seed), connect=listener.url, name=name, token=TOKENS[name],
                                  block=False, **serve_options)
                )  # fmt: skip
            assert sorted(listener.wait_for(3, timeout=30)) == sorted(NAMES)
            return listener

        try:
            yield start
        finally:
            for dialer in running:
                dialer.close()


@pytest.mark.slow  # three dialers and two secure rounds (about 5 s)
def test_a_secure_round_over_dialed_in_devices_equals_fedavg(dialed):
    listener = dialed()
    plain = FedArrays(model())
    with Federated(plain, listener.remotes(), timeout=30) as alg:
        alg.round()
    scale = 2**12
    secure = FedArrays(model())
    with Federated(secure, listener.remotes(), timeout=30, secure_aggregation=SecAgg(scale=scale)) as alg:
        result = alg.round()  # repetition 2 on the devices, from zeros again: the same update as the plain round
    assert result.failures == {} and result.samples == 60
    assert result.devices == {} and result.metrics == {}  # the total only, never a dialed-in device's own count
    assert_within_quantization(secure.model, plain.model, scale)
    assert not np.array_equal(secure.model["w"], plain.model["w"])  # the masked path ran


@pytest.mark.slow
def test_central_dp_over_dialed_in_devices_clips_as_over_http(dialed):
    listener = dialed()
    clip = 1e-3  # far below each update's norm: every update is clipped to it
    data = FedArrays(model(), strategy=DPFixedClipping(FedAvg(), noise_multiplier=0.0, clipping_norm=clip,
                                                       num_sampled_clients=3))  # fmt: skip
    with Federated(data, listener.remotes(), timeout=30) as alg:
        result = alg.round()
    assert result.failures == {}
    norm = float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in data.model.values())))
    assert 0 < norm <= clip * (1 + 1e-4)  # the mean of updates clipped to `clip` is within it


@pytest.mark.slow
def test_a_dialed_in_device_that_requires_secure_aggregation_refuses_a_plain_round(dialed):
    listener = dialed(secure_aggregation="required")
    data = FedArrays(model())
    with Federated(data, listener.remotes(), timeout=20, min_results=1) as alg, pytest.raises(
        fedsync.errors.RoundFailed, match="secure"
    ):
        alg.round()
    assert all(np.all(a == 0) for a in data.model.values())  # nothing merged
