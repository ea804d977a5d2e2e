"""Dial-out end to end (issue #20): the real Listener, real `fedsync serve --connect` device processes, loopback only.

Each test starts its processes and stops them all, whatever happens.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from fedsync import FedArrays, Federated
from fedsync.transports.dial import Listener
from tests.support.processes import start_device, stop_all
from tests.support.proxy import CuttingProxy
from tests.transports.dial.e2e import dial

pytestmark = pytest.mark.slow

TOKENS = {"site-a": "token-a", "site-b": "token-b", "site-c": "token-c"}


def small() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


@pytest.fixture
def dialers():
    started = []

    def start(*args, **kwargs):
        started.append(dial(*args, **kwargs))
        return started[-1]

    yield start
    for device in started:
        device.stop()


def test_a_round_mixes_dialed_in_device_processes_and_a_direct_one(tmp_path, dialers):
    with Listener("127.0.0.1", 0, devices=TOKENS) as listener:
        dialers(tmp_path, listener.url, "site-a", "token-a", value=1.0, samples=1)
        dialers(tmp_path, listener.url, "site-b", "token-b", value=2.0, samples=1)
        assert listener.wait_for(2, timeout=60) == ["site-a", "site-b"]
        direct = start_device("constant", 4.0, 2)
        try:
            coordinator = small()
            remotes = [direct.url, listener.remote("site-a"), listener.remote("site-b")]
            with Federated(data=coordinator, remotes=remotes, timeout=30, dashboard=0) as alg:
                result = alg.round()
                devices = requests.get(alg.dashboard.url + "/api/devices", timeout=10).json()["devices"]
                history = alg.history
        finally:
            stop_all([direct])
    assert result.failures == {}
    for a in coordinator.model.values():
        assert np.all(a == np.float32(2.75))  # (1*1 + 2*1 + 4*2) / 4, exact in float32
    run = {direct.url, "dial://site-a", "dial://site-b"}
    assert set(result.answered) == run == set(result.devices) == set(history.rounds[0].answered)
    rows = {row["url"]: row for row in devices}
    assert set(rows) == run and all(rows[url]["answered"] == 1 for url in run)


@pytest.mark.parametrize("how", ["not on the list", "another's name", "another's certificate"])
def test_a_refused_device_exits_2_naming_the_cause_and_nothing_changes(tmp_path, dialers, how):
    tls, extra = {}, []
    if how == "another's certificate":
        from fedsync.wire import certs

        pki = tmp_path / "pki"
        ca = certs.init_ca(pki)
        server_cert, server_key = certs.issue_device(pki, ["127.0.0.1"])
        client_cert, client_key = certs.issue_coordinator(pki, name="site-b")  # a client certificate naming site-b
        tls = {"ssl_context": (str(server_cert), str(server_key)), "client_ca": str(ca)}
        extra = ["--cafile", str(ca), "--certfile", str(client_cert), "--keyfile", str(client_key)]
    name, token = {"not on the list": ("intruder", "token-x"), "another's name": ("site-b", "token-a")}.get(
        how, ("site-a", "token-a")
    )
    with Listener("127.0.0.1", 0, devices=TOKENS, **tls) as listener:
        device = dialers(tmp_path, listener.url, name, token, *extra)
        assert device.process.wait(timeout=60) == 2
        log = device.log_text()
        says = {"not on the list": "not_allowed", "another's name": "token refused", "another's certificate": "identity_mismatch"}
        assert says[how] in log and "refused" in log, log
        assert listener.connected() == [] and listener.hub.jobs == {}
        assert all(listener.stats(n) == listener.stats("site-c") for n in TOKENS)  # nothing moved for anyone


@pytest.mark.parametrize("direction", ["down", "up"])
def test_a_download_and_an_upload_cut_at_half_resume_exactly(tmp_path, dialers, direction):
    # 64 MiB of float32: what a cut re-sends is what was in flight, up to the job's 4 MiB pipe and the sockets'
    # buffers; with 16 MiB that sat right at the quarter the test allows (4,195,060 bytes re-sent: flaky).
    n = 16 * 1024 * 1024
    payload = 4 * n
    with Listener("127.0.0.1", 0, devices=TOKENS) as listener:
        with CuttingProxy(listener.url, direction=direction, after=payload // 2) as proxy:
            dialers(tmp_path, proxy.url, "site-a", "token-a", value=3.0, samples=2, size=n)
            listener.wait_for(1, timeout=60)
            coordinator = FedArrays({"w": np.zeros(n, np.float32)})
            with Federated(data=coordinator, remotes=[listener.remote("site-a")], timeout=60) as alg:
                result = alg.round()
            assert proxy.cuts == 1
    assert result.failures == {} and np.all(coordinator.model["w"] == 3.0)
    stats = listener.stats("site-a")
    if direction == "down":
        assert stats["resumed_downloads"] >= 1 and 0 <= stats["bytes_resent"] < payload // 4
    else:
        assert stats["resumed_uploads"] >= 1 and payload <= stats["bytes_received"] < payload + payload // 4


def test_a_device_killed_mid_upload_is_its_failure_and_the_others_merge(tmp_path, dialers):
    n = 8 * 1024 * 1024  # 32 MiB of float32
    with Listener("127.0.0.1", 0, devices=TOKENS) as listener:
        # The victim's uploads cross a slow link (about 3 MB/s), so it is surely killed part-way.
        with CuttingProxy(listener.url, direction="up", after=1 << 40, pause=0.02) as slow:
            victim = dialers(tmp_path, slow.url, "site-a", "token-a", value=9.0, size=n)
            dialers(tmp_path, listener.url, "site-b", "token-b", value=1.0, samples=1, size=n)
            dialers(tmp_path, listener.url, "site-c", "token-c", value=3.0, samples=1, size=n)
            listener.wait_for(3, timeout=60)
            coordinator = FedArrays({"w": np.zeros(n, np.float32)})
            remotes = listener.remotes(timeout=10)
            killed = []

            def kill_mid_upload() -> None:
                for _ in range(6000):  # at most 60 s
                    if listener.stats("site-a")["bytes_received"] > 2 * 1024 * 1024:
                        victim.process.kill()
                        killed.append(listener.stats("site-a")["bytes_received"])
                        return
                    time.sleep(0.01)

            watcher = threading.Thread(target=kill_mid_upload, daemon=True)
            watcher.start()
            with Federated(data=coordinator, remotes=remotes, timeout=30, min_results=2) as alg:
                result = alg.round()
            watcher.join(60)
    assert killed and killed[0] < 4 * n  # killed part-way through its 32 MiB answer
    assert set(result.failures) == {"dial://site-a"} and result.failures["dial://site-a"], result.failures
    assert set(result.answered) == {"dial://site-b", "dial://site-c"}
    assert np.all(coordinator.model["w"] == 2.0)  # (1 + 3) / 2: the victim's part dropped whole
