"""docs/deployment.md's reverse proxy, tested with a real nginx running deploy/nginx/fedsync-proxy.conf (issue #21).

Real parts only: Debian's nginx terminating TLS on 127.0.0.1, the real ``fedsync serve`` command behind it (listening,
or dialing out to a real ``Listener``), a real coordinator in this process. Each test stops every process it starts.
nginx's access log shows what passed through it: sizes both ways and how long each request was held.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedsync import FedArrays, Federated, Remote
from fedsync.transports.dial import Listener
from tests.support.nginx import Nginx, free_port, proxy_config, require_nginx, start_fedsync
from tests.support.processes import tls_files

pytestmark = pytest.mark.slow

BIG = 26_000_000  # float32 weights: 104 MB each way
MB = 10**6


@pytest.fixture
def stack(tmp_path):
    """Starts fedsync processes and nginx for a test; stops all of them afterwards, whatever happened."""
    require_nginx()
    started: list = []

    def fedsync(*args: str, **device: object):
        started.append(start_fedsync(tmp_path / f"fedsync-{len(started)}.log", *args, device=device))
        return started[-1]

    def nginx(devices: list[str], listener: str | None = None):
        cert, key, ca = tls_files(tmp_path)
        config, ports, listener_port = proxy_config(devices, listener, cert, key)
        proxy = Nginx(tmp_path / "nginx", config, [*ports, *([listener_port] if listener_port else [])])
        started.append(proxy)
        return proxy, ca, ports, listener_port

    yield fedsync, nginx
    for process in reversed(started):
        process.stop()


def test_a_round_of_104_mb_each_way_through_nginx_in_front_of_a_device(stack):
    fedsync, nginx = stack
    device = fedsync("--host", "127.0.0.1", "--port", str(free_port()), size=BIG, value=1.5, samples=3, delay=3.0)
    proxy, ca, (port,), _ = nginx([device.url.removeprefix("http://")])
    coordinator = FedArrays({"w": np.zeros(BIG, np.float32)})
    remote = Remote(f"https://127.0.0.1:{port}", verify=ca, timeout=60)
    with Federated(data=coordinator, remotes=[remote], timeout=300, dashboard=None) as alg:
        result = alg.round()
    assert result.failures == {}, (result.failures, proxy.errors(), device.log_text())
    assert result.samples == 3
    assert np.all(coordinator.model["w"] == np.float32(1.5))  # the device's weights, exactly
    passed = proxy.requests()
    assert all(r.status < 500 for r in passed), passed
    submits = [r for r in passed if r.method == "POST" and r.uri == "/1/submit"]
    assert len(submits) == 1 and submits[0].status == 202 and submits[0].received > 104 * MB
    results = [r for r in passed if r.method == "GET" and r.uri.startswith("/1/result?wait=")]
    assert results[-1].status == 200 and results[-1].sent > 104 * MB, results
    # The device trained for 3 s: a long-poll was held open through nginx while it did (not answered at once).
    assert any(r.seconds >= 1.0 for r in results), results
    assert "[error]" not in proxy.errors() and "[warn]" not in proxy.errors(), proxy.errors()


def test_the_largest_config_header_passes_nginx(stack):
    """8 KiB of X-Fedsync-Config (wire.config.MAX_CONFIG_BYTES) does not fit nginx's default 8k header buffers."""
    from fedsync.wire.config import MAX_CONFIG_BYTES, encode_config

    fedsync, nginx = stack
    device = fedsync("--host", "127.0.0.1", "--port", str(free_port()), value=2.0, samples=1)
    proxy, ca, (port,), _ = nginx([device.url.removeprefix("http://")])
    config = {f"k{i:02d}": "x" * 100 for i in range(64)}
    config["k00"] += "x" * (MAX_CONFIG_BYTES - len(encode_config(config)))
    assert len(encode_config(config)) == MAX_CONFIG_BYTES
    coordinator = FedArrays({"w": np.zeros(6, np.float32)})
    remote = Remote(f"https://127.0.0.1:{port}", verify=ca, timeout=30)
    with Federated(data=coordinator, remotes=[remote], timeout=60, dashboard=None, config=config) as alg:
        result = alg.round()
    assert result.failures == {}, (result.failures, proxy.errors())
    assert np.all(coordinator.model["w"] == np.float32(2.0))
    assert [r.status for r in proxy.requests() if r.uri == "/1/submit"] == [202]


def test_a_dialing_device_reaches_the_listener_through_nginx_with_long_polls_and_a_104_mb_answer(stack):
    fedsync, nginx = stack
    with Listener("127.0.0.1", 0, devices={"site-a": "token-a"}) as listener:
        proxy, ca, _, port = nginx([], listener=listener.url.removeprefix("http://"))
        url = f"https://127.0.0.1:{port}"
        device = fedsync("--connect", url, "--name", "site-a", "--token", "token-a", "--cafile", ca,
                         size=BIG, value=0.25, samples=4, delay=3.0)  # fmt: skip
        assert listener.wait_for(1, timeout=60) == ["site-a"], device.log_text()
        time.sleep(2.0)  # the registered device idles in a `next` long-poll, held open through nginx
        coordinator = FedArrays({"w": np.zeros(BIG, np.float32)})
        with Federated(data=coordinator, remotes=listener.remotes(), timeout=300, dashboard=None) as alg:
            result = alg.round()
        passed = proxy.requests()  # before the listener closes: a closing listener ends the waiting `next` with 503
    assert result.failures == {}, (result.failures, proxy.errors(), device.log_text())
    assert result.samples == 4 and np.all(coordinator.model["w"] == np.float32(0.25))
    assert all(r.status < 500 for r in passed), [r for r in passed if r.status >= 500]
    assert any(r.uri == "/dial/1/site-a/register" and r.status == 200 for r in passed), passed
    # The device's `next` long-poll waited at the proxy until the round's first job came, and answered it.
    polls = [r for r in passed if r.uri.startswith("/dial/1/site-a/next?wait=")]
    assert any(r.status == 200 for r in polls) and any(r.seconds >= 1.0 for r in polls), polls
    bodies = [r for r in passed if r.method == "GET" and r.uri.endswith("/body")]
    answers = [r for r in passed if r.method == "POST" and r.uri.endswith("/answer")]
    assert any(r.sent > 104 * MB for r in bodies), bodies  # the model, down to the device
    assert any(r.received > 104 * MB for r in answers), answers  # the trained model, up through nginx
    assert "[error]" not in proxy.errors(), proxy.errors()
