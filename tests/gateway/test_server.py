"""fedsync's device server keeps HTTP/1.1 connections open, and closes them when it must."""

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays
from fedsync.device import DeviceApp
from fedsync.gateway import server as gateway
from fedsync.wire.http import SPECS_HEADER
from tests.support.processes import tls_files
from tests.support.seed_fedfloat import FedFloat


def connect(server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(server.host, server.port, timeout=10)


def get(connection, path, method="GET", body=None, headers=None):
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response, response.read()


def test_requests_on_one_connection_reuse_it():
    with fedsync.serve(FedFloat(1.0), port=0, block=False) as server:
        connection = connect(server)
        first, _ = get(connection, "/info")
        local = connection.sock.getsockname()
        second, body = get(connection, "/info")
        head, _ = get(connection, "/info", method="HEAD")
        third, _ = get(connection, "/info")
        assert [r.status for r in (first, second, head, third)] == [200] * 4
        assert connection.sock is not None and connection.sock.getsockname() == local
        assert first.getheader("Connection") is None and b'"specs"' in body


def test_a_body_left_unread_closes_the_connection_instead_of_being_taken_for_a_request():
    data = FedArrays({"w": np.zeros(1000, np.float32)})
    with fedsync.serve(data, port=0, block=False) as server:
        connection = connect(server)
        # The specs are refused before the body is read: its bytes are still on the wire.
        body = b"GET /info HTTP/1.1\r\n\r\n" * 2000
        refused, answer = get(connection, "/1/submit", "POST", body, {SPECS_HEADER: "arrays:sha256:0"})
        assert refused.status == 409 and b"specs_mismatch" in answer
        assert refused.getheader("Connection") == "close"
        again, _ = get(connection, "/info")  # a new connection, not the body's bytes
        assert again.status == 200


def test_a_chunked_request_body_is_refused_with_411():
    with fedsync.serve(FedFloat(1.0), port=0, block=False) as server:
        connection = connect(server)
        connection.request("POST", "/1/submit", body=iter([b"1.0"]), encode_chunked=True, headers={SPECS_HEADER: "x"})
        response = connection.getresponse()
        assert response.status == 411 and response.getheader("Connection") == "close"
        assert response.getheader("Content-Type").startswith("application/json")  # every error is JSON (protocol.md)
        assert json.loads(response.read())["error"] == "length_required"


def test_a_closed_device_answers_nobody_even_on_an_open_connection():
    server = fedsync.serve(FedFloat(1.0), port=0, block=False)
    connection = connect(server)
    assert get(connection, "/info")[0].status == 200
    server.close()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        get(connection, "/info")


def test_an_idle_connection_is_closed_after_the_idle_timeout(monkeypatch):
    monkeypatch.setattr(gateway, "IDLE_TIMEOUT", 0.3)
    with fedsync.serve(FedFloat(1.0), port=0, block=False) as server:
        sock = socket.create_connection((server.host, server.port), timeout=10)
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(65536) == b""  # the server hung up
        assert time.monotonic() - started < 5
        sock.close()


def test_rounds_reuse_one_connection_per_device():
    ports = []

    def train(model):
        model["w"][...] = 2.0
        return 1

    device = FedArrays({"w": np.zeros(300_000, np.float32)}, train)  # streamed, 1.2 MB
    app = DeviceApp(device)

    def recording(environ, start_response):  # which client connection each request came on
        ports.append(environ["REMOTE_PORT"])
        return app(environ, start_response)

    server = gateway.KeepAliveServer(socket.create_server(("127.0.0.1", 0)), recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        coordinator = FedArrays({"w": np.zeros(300_000, np.float32)})
        with fedsync.Federated(data=coordinator, remotes=[f"http://127.0.0.1:{server.server_port}"]) as alg:
            for _ in range(3):
                alg.round()
    finally:
        server.shutdown()
        server.server_close()
    assert np.all(coordinator.model["w"] == 2.0)
    assert len(ports) >= 7 and len(set(ports)) == 1  # handshake, then 3 x (submit, long-poll with the reply)


def test_a_client_that_never_completes_tls_blocks_no_one_else(tmp_path):
    cert, key, ca = tls_files(tmp_path)
    with fedsync.serve(FedFloat(1.0), port=0, block=False, ssl_context=(cert, key)) as server:
        silent = socket.create_connection((server.host, server.port), timeout=10)  # no handshake
        try:
            info = fedsync.Remote(server.url, verify=ca, timeout=5).info()
        finally:
            silent.close()
    assert info["specs"] == FedFloat(1.0).specs(1)


def test_a_whole_result_over_max_reply_is_refused_with_or_without_a_length():
    class Big(FedFloat):
        def serialize(self, repetition):
            return "1" * 3_000_000

    with fedsync.serve(Big(1.0), port=0, block=False) as server:
        with fedsync.Federated(data=FedFloat(0.0), remotes=[fedsync.Remote(server.url, max_reply=1_000_000)]) as alg:
            with pytest.raises(fedsync.errors.RoundFailed) as failed:
                alg.round()
        assert "announced a result of 3000000 bytes, over max_reply (1000000)" in failed.value.failures[server.url]
        assert alg.data.value == 0.0

    def unsized(environ, start_response):  # a result streamed without a Content-Length
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 100_000 for _ in range(30))

    listener = socket.create_server(("127.0.0.1", 0))
    server = gateway.KeepAliveServer(listener, unsized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = fedsync.Remote(f"http://127.0.0.1:{listener.getsockname()[1]}", max_reply=1_000_000)
        with pytest.raises(fedsync.errors.RemoteError, match=r"more than max_reply \(1000000\)"):
            remote.result(1, 0.0)
        assert len(fedsync.Remote(remote.url).result(1, 0.0)) == 3_000_000
    finally:
        server.shutdown()
        server.server_close()


def test_connections_beyond_max_connections_are_refused_with_503_and_the_device_keeps_serving():
    with fedsync.serve(FedFloat(1.0), port=0, block=False, max_connections=3) as server:
        held = [connect(server) for _ in range(3)]
        for connection in held:  # three open connections, each with its thread
            assert get(connection, "/info")[0].status == 200
        extra = connect(server)
        refused, body = get(extra, "/info")
        assert refused.status == 503 and refused.getheader("Connection") == "close"
        assert json.loads(body)["error"] == "too_many_connections"
        held.pop().close()  # one closes: a new connection gets through again
        deadline = time.monotonic() + 10
        while True:
            again = connect(server)
            try:
                status = get(again, "/info")[0].status
            finally:
                again.close()
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the server notices the close on its connection's thread
        assert status == 200
        for connection in held:
            connection.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_max_connections_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_connections must be a positive integer"):
        fedsync.serve(FedFloat(1.0), port=0, block=False, max_connections=bad)
