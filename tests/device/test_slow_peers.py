"""The device's HTTP answers under hostile peers (issue #22): real rounds go on while attacks run.

Each attack runs against a device process while a real coordinator runs rounds on it; the
smaller checks (headers, 401 wording, 413 from the length, 500 for a device bug) use a device
served in this process over real sockets.
"""

import base64
import hashlib
import http.client
import json
import logging
import re
import socket
import threading

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays
from fedsync.transports.base import redact_bearer
from fedsync.wire.http import SPECS_HEADER
from tests.support.device_http import address
from tests.support.seed_fedfloat import FedFloat

MiB = 1 << 20


def constant_model() -> FedArrays:
    """The coordinator's side of tests.support.devices.basic:constant."""
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def rounds(url: str, count: int = 2) -> FedArrays:
    data = constant_model()
    with fedsync.Federated(data=data, remotes=[url], timeout=30) as alg:
        for _ in range(count):
            alg.round()
    return data


def answer(sock: socket.socket, method: str = "GET") -> tuple[int, dict, bytes]:
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


# -- the attacks of issue #22, with a real round going on ------------------------------------------


@pytest.mark.slow
def test_rounds_complete_while_a_secagg_keys_body_trickles(devices):
    device = devices("constant", 1.0, 1)
    trickler = socket.create_connection(address(device.url), timeout=10)
    trickler.sendall(b"POST /1/secagg/keys HTTP/1.1\r\nHost: x\r\nContent-Length: 8192\r\n\r\n")
    stop = threading.Event()

    def trickle() -> None:
        for _ in range(100):  # slowhttptest -B: 10 bytes every 2 s (at most 200 s)
            try:
                trickler.sendall(b"{" + b" " * 9)
            except OSError:
                return
            if stop.wait(2.0):
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        data = rounds(device.url)
        np.testing.assert_array_equal(data.model["w"], np.ones((3, 2), np.float32))
    finally:
        stop.set()
        thread.join(timeout=10)
        trickler.close()


@pytest.mark.slow
def test_rounds_complete_while_strangers_hold_more_connections_than_the_cap(devices):
    device = devices("constant", 1.0, 1)
    strangers = []
    try:
        for _ in range(200):  # 128 is the device's cap: slowloris holds them all, never a whole head
            sock = socket.create_connection(address(device.url), timeout=10)
            sock.sendall(b"GET /info HTTP/1.1\r\n")
            strangers.append(sock)
        data = rounds(device.url)
        np.testing.assert_array_equal(data.model["w"], np.ones((3, 2), np.float32))
    finally:
        for sock in strangers:
            sock.close()


# -- item 4: a device bug is a 500 JSON answer, never a dropped connection ------------------------


def test_an_exception_in_a_handler_is_a_500_json_answer_on_a_kept_connection(monkeypatch, caplog):
    from fedsync.device import app

    def broken(device, rep, phase, body):
        raise RuntimeError("a bug in a phase")

    monkeypatch.setattr(app, "secagg_answer", broken)
    caplog.set_level(logging.INFO, logger="fedsync.server")
    with fedsync.serve(constant_model(), port=0, block=False) as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        connection.request("POST", "/1/secagg/keys", body=b"{}")
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 500 and body["error"] == "internal_error", body
        assert response.getheader("Connection") is None  # the connection stays usable
        local = connection.sock.getsockname()
        connection.request("GET", "/info")
        again = connection.getresponse()
        assert again.status == 200 and again.read()
        assert connection.sock.getsockname() == local
        connection.close()
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert len(logged) == 1 and "a bug in a phase" in logged[0].exc_text, [r.getMessage() for r in logged]


# -- item 5: a body larger than any payload of the model is refused from its length --------------


@pytest.mark.parametrize("route", ["submit", "evaluate"])
def test_a_body_beyond_the_models_size_is_refused_413_before_it_is_read(route):
    data = FedArrays({"w": np.zeros(3, np.float32)})  # a 12-byte model
    with fedsync.serve(data, port=0, block=False) as server:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            # The head only: a device that waited for the 300 MiB would never answer.
            sock.sendall(
                f"POST /1/{route} HTTP/1.1\r\nHost: x\r\n{SPECS_HEADER}: {data.specs(1)}\r\n"
                f"Content-Length: {300 * MiB}\r\n\r\n".encode()
            )
            status, _, body = answer(sock, "POST")
    assert status == 413 and json.loads(body)["error"] == "too_large", body


@pytest.mark.parametrize(
    "data",
    [
        FedArrays({"w": np.zeros(3, np.float32)}),
        FedArrays({"a": np.ones((7, 5), np.float64), "n": np.arange(4, dtype=np.int64), "b": np.zeros(0, np.uint8)}),
        FedArrays({"w": np.ones(100, np.float32), "z": np.zeros(2, np.int32)}, wire_dtype="float16"),
        FedArrays({"w": np.ones(100, np.float32)}, wire_dtype="int8"),
    ],
    ids=["tiny", "mixed", "float16", "int8"],
)
def test_a_models_own_payload_is_within_its_max_payload(data):
    payload = bytes(data.serialize(1))
    # The header may hold up to 1 MiB of metadata (metrics), never more.
    assert len(payload) <= data.max_payload(1) < len(payload) + 2 * MiB


def test_a_fed_data_without_a_bound_states_none():
    assert FedFloat(1.0).max_payload(1) is None


# -- item 6: headers a browser needs ---------------------------------------------------------------

INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def policy_allows_exactly_its_inline_code(page: str, policy: str) -> None:
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy, policy
    for kind, code in INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy, (kind, policy)


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_pages_and_answers_carry_csp_nosniff_and_no_framing(token):
    with fedsync.serve(FedFloat(1.0), port=0, block=False, token=token) as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        connection.request("GET", "/", headers={"Accept": "text/html"})  # the status page, or the locked one
        page = connection.getresponse()
        text = page.read().decode()
        assert "<script>" in text
        policy_allows_exactly_its_inline_code(text, page.getheader("Content-Security-Policy", ""))
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", "/info", headers=auth)
        api = connection.getresponse()
        api.read()
        for response in (page, api):
            assert response.getheader("X-Content-Type-Options") == "nosniff"
            assert response.getheader("X-Frame-Options") == "DENY"
            assert response.getheader("Referrer-Policy") == "no-referrer"
        assert api.getheader("Content-Security-Policy", "").startswith("default-src 'none'")
        connection.close()


# -- item 7: a 401 says whether the token was missing or refused ---------------------------------


@pytest.mark.parametrize(("headers", "word"), [({}, "missing"), ({"Authorization": "Bearer wrong"}, "refused")])
def test_a_401_says_whether_the_token_was_missing_or_refused(headers, word):
    with fedsync.serve(FedFloat(1.0), port=0, block=False, token="s3cret") as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        connection.request("GET", "/info", headers=headers)
        response = connection.getresponse()
        message = json.loads(response.read())["message"]
        connection.close()
    assert response.status == 401 and message.startswith(f"token {word}"), message
    assert redact_bearer(message) == message  # a coordinator shows it as written, no "[redacted]"


# -- item 8: a device that requires secure aggregation evaluates nothing in the clear --------------


def test_a_device_requiring_secure_aggregation_refuses_a_plain_evaluation():
    data = constant_model()
    with fedsync.serve(data, port=0, block=False, secure_aggregation="required") as server:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        connection.request("POST", "/1/evaluate", body=bytes(data.serialize(1)), headers={SPECS_HEADER: data.specs(1)})
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
    assert response.status == 409 and body["error"] == "secure_aggregation_required", body
