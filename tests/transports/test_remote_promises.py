"""What Remote promises about connections: retries, no blind re-send, the CA bundle, text replies."""

import socket
import threading

import numpy as np
import pytest

import fedsync
from fedsync import Federated, Remote
from fedsync.errors import RemoteError, RemoteUnavailable
from tests.support import hostile
from tests.support.devices.basic import setting, zeros
from tests.support.processes import tls_files
from tests.support.seed_fedfloat import FedFloat


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_device_that_comes_up_late_is_reached_on_a_retry():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RemoteUnavailable, match="cannot connect"):
        Remote(url, retries=0).info()  # nothing listens yet: refused
    started, servers = threading.Event(), []

    def come_up_late():
        started.wait(10)
        # The first attempt is refused; backoff 0.1 s doubling gives 6 retries about 6 s in all.
        threading.Event().wait(0.3)
        servers.append(fedsync.serve(FedFloat(1.0), port=port, block=False))

    threading.Thread(target=come_up_late, daemon=True).start()
    started.set()
    try:
        assert Remote(url, retries=6).info()["specs"] == "Float"
    finally:
        for server in servers:
            server.close()


def test_a_submit_whose_connection_drops_after_sending_is_not_sent_again():
    requests_seen, listener = [], socket.create_server(("127.0.0.1", 0))

    def swallow():  # reads each request whole, then hangs up without an answer
        listener.settimeout(30)
        while True:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(10)
                data = b""
                while not data.startswith((b"STOP", b"HEAD")) and not (b"\r\n\r\n" in data and data.endswith(b"1.0")):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"STOP"):
                    return
                requests_seen.append(data.split(b"\r\n", 1)[0])

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    remote = Remote(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=3, timeout=10)
    with pytest.raises(RemoteUnavailable):
        remote.submit(1, "1.0", "Float")
    # Every attempt the submit made is over: tell the listener to stop.
    socket.create_connection(listener.getsockname(), timeout=10).sendall(b"STOP")
    thread.join(10)
    listener.close()
    # Once: the device may have taken it. A resumable submission asks how much arrived (HEAD), and
    # resumes only from bytes the device says it holds (docs/protocol.md, "Transfers that resume").
    assert requests_seen == [b"POST /1/submit HTTP/1.1", b"HEAD /1/submit HTTP/1.1"]


def test_requests_ca_bundle_is_honoured_for_https(tmp_path, monkeypatch):
    cert, key, ca = tls_files(tmp_path)
    with fedsync.serve(FedFloat(1.0), port=0, block=False, ssl_context=(cert, key)) as server:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        with pytest.raises(RemoteUnavailable, match="TLS certificate not trusted"):
            Remote(server.url, retries=0).info()
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
        assert Remote(server.url, retries=0).info()["specs"] == "Float"


def round_beside_a_hostile_device(healthy_fed, data, kind: str, params: dict):
    """One round over a real device serving ``healthy_fed`` and a hostile one: (result, healthy url, hostile url)."""
    healthy = fedsync.serve(healthy_fed, port=0, block=False)
    bad = hostile.serve(kind, params)
    bad_url = f"http://127.0.0.1:{bad.server_address[1]}"
    try:
        with Federated(data, [healthy.url, bad_url], min_results=1, timeout=20) as alg:
            return alg.round(), healthy.url, bad_url
    finally:
        healthy.close()
        bad.shutdown()
        bad.server_close()


def test_a_text_result_that_is_not_utf8_is_that_devices_failure():
    data = FedFloat(0.0)
    result, healthy_url, bad_url = round_beside_a_hostile_device(FedFloat(2.0), data, "text", {"kind": "fedfloat", "hex": "ff fe 31 2e 30"})
    assert result.answered == [healthy_url] and data.value == 2.0
    assert list(result.failures) == [bad_url]
    assert "sent a text/plain result that is not UTF-8" in result.failures[bad_url]


def test_a_reply_for_another_repetition_is_that_devices_failure():
    data = zeros()
    # well-formed, but not this round's repetition
    result, healthy_url, bad_url = round_beside_a_hostile_device(setting(2.0), data, "header", {"headers": {"X-Fedsync-Repetition": "2"}})
    assert result.answered == [healthy_url] and list(result.failures) == [bad_url]
    assert "answered repetition '2' instead of 1" in result.failures[bad_url]
    assert np.all(data.model["w"] == 2.0)


def test_a_negative_sample_count_from_an_evaluation_is_that_devices_failure():
    bad = hostile.serve("eval", {"answer": '{"samples": -1, "metrics": {"accuracy": 0.5}}'})
    url = f"http://127.0.0.1:{bad.server_address[1]}"
    try:
        with pytest.raises(RemoteError, match=r"evaluation answered no valid samples and metrics: samples .*-1"):
            Remote(url).evaluate(1, zeros().serialize(1), zeros().specs(1))
    finally:
        bad.shutdown()
        bad.server_close()


def test_a_devices_refusal_names_the_device_in_url_as_remote_errors_do():
    """SpecsMismatch and PayloadRejected raised by a Remote carry ``.url``, like RemoteError (review B4)."""
    import numpy as np

    import fedsync
    from fedsync import FedArrays, Remote
    from fedsync.errors import PayloadRejected, SpecsMismatch

    data = FedArrays({"w": np.zeros(3)})
    with fedsync.serve(data, port=0, block=False) as server, Remote(server.url, retries=0) as remote:
        with pytest.raises(SpecsMismatch) as mismatch:
            remote.submit(1, bytes(data.serialize(1)), "arrays:sha256:0000000000000000")
        assert mismatch.value.url == server.url
        with pytest.raises(PayloadRejected) as rejected:
            remote.submit(2, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", data.specs(2))
        assert rejected.value.url == server.url
    assert PayloadRejected("local check").url is None
