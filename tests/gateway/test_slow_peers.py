"""A slow, silent or malformed peer holds nothing an honest request needs (issue #22).

Real sockets against a real server in this process (the limits are monkeypatched short, so
no test waits out the real ones); tests/device/test_slow_peers.py runs whole rounds against
device processes while the same attacks go on.
"""

import http.client
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays
from fedsync.gateway import server as gateway
from fedsync.wire.http import SPECS_HEADER
from tests.support.seed_fedfloat import FedFloat


def raw(server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def closed_by_peer(sock: socket.socket, seconds: float = 15.0) -> bool:
    """Whether the server ends ``sock`` (recv returns b"" or resets) within ``seconds``, reading whatever it answers."""
    sock.settimeout(seconds)
    try:
        for _ in range(1000):  # bounded: each answer is a few hundred bytes
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def answer(sock: socket.socket, method: str = "GET") -> tuple[int, dict, bytes]:
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


# -- item 3: every error path answers and ends cleanly (none crashes after answering) --------

ERRORS = {
    "101_header_lines": (b"GET /info HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    "64k_of_headers": (b"GET /info HTTP/1.1\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    "long_request_line": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 414),
    "http_0_9": (b"GET /info\r\n\r\n", 400),
    "garbage": (b"\x16\x03\x01\x00\xa5 hello\r\n\r\n", 400),
    "bad_version": (b"GET /info HTTP/2.0\r\n\r\n", 400),
    "chunked": (b"POST /1/submit HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 411),
    "two_lengths": (b"POST /1/submit HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab", 400),
    "length_not_a_number": (b"POST /1/submit HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n", 400),
    "length_of_30_digits": (b"POST /1/submit HTTP/1.1\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n", 413),
    "two_hosts": (b"GET /info HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "bad_target": (b"GET info HTTP/1.1\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_every_error_the_gateway_answers_ends_without_a_crash(name, caplog):
    request, status = ERRORS[name]
    caplog.set_level(logging.DEBUG, logger="fedsync.server")
    with fedsync.serve(FedFloat(1.0), port=0, block=False) as server:
        with raw(server) as sock:
            sock.sendall(request)
            got, headers, body = answer(sock)
            assert got == status and headers["content-type"] == "application/json", (got, body)
            assert json.loads(body)["error"]
            assert closed_by_peer(sock)
        # Still serving, and nothing went wrong on the server's side after the answer.
        with raw(server) as sock:
            sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(sock)[0] == 200
    crashed = [r for r in caplog.records if r.exc_info is not None]
    assert not crashed, [r.getMessage() for r in crashed]


# -- item 2: a request head must be whole in time; strangers give way to newcomers --------------


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_a_request_head_trickled_a_line_at_a_time_is_cut_at_its_deadline(monkeypatch):
    monkeypatch.setattr(gateway, "HEAD_TIMEOUT", 1.0)
    with fedsync.serve(FedFloat(1.0), port=0, block=False) as server:
        with raw(server) as sock:
            sock.sendall(b"GET /info HTTP/1.1\r\n")
            cut = False
            for _ in range(60):  # 12 s of header lines, each well inside the per-read timeout
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    cut = True
                    break
                time.sleep(0.2)
            assert cut or closed_by_peer(sock, 1.0), "the trickled head kept its connection past the head deadline"


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_a_tls_handshake_trickled_byte_by_byte_is_cut_at_its_deadline(monkeypatch, tmp_path):
    from tests.support.processes import tls_files

    monkeypatch.setattr(gateway, "HEAD_TIMEOUT", 1.0)
    cert, key, _ = tls_files(tmp_path)
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(32)  # the start of a ClientHello, never finished
    with fedsync.serve(FedFloat(1.0), port=0, block=False, ssl_context=(cert, key)) as server:
        with raw(server) as sock:
            cut = False
            for byte in hello:  # 43 bytes, 0.3 s apart: 13 s, each byte inside the per-read timeout
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    cut = True
                    break
                time.sleep(0.3)
            assert cut or closed_by_peer(sock, 1.0)


def test_idle_strangers_give_their_slots_to_a_newcomer():
    with fedsync.serve(FedFloat(1.0), port=0, block=False, max_connections=4) as server:
        strangers = [raw(server) for _ in range(8)]  # more than all slots, never a byte sent
        try:
            time.sleep(0.2)  # the accepting thread has taken them all (no assertion on time)
            with raw(server) as sock:
                sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, body = answer(sock)
            assert status == 200, body
        finally:
            for sock in strangers:
                sock.close()


def test_a_connection_that_authenticated_keeps_its_slot_while_strangers_flood():
    with fedsync.serve(FedFloat(1.0), port=0, block=False, max_connections=4, token="s3cret") as server:
        trusted = http.client.HTTPConnection(server.host, server.port, timeout=10)
        auth = {"Authorization": "Bearer s3cret"}
        trusted.request("GET", "/info", headers=auth)
        assert trusted.getresponse().read() and trusted.sock is not None
        local = trusted.sock.getsockname()
        # Strangers: some never send a byte, some are refused 401 and stay connected.
        strangers = [raw(server) for _ in range(6)]
        for sock in strangers[:3]:
            sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            for _ in range(3):  # and a newcomer with the token finds room each time
                with raw(server) as sock:
                    sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n")
                    assert answer(sock)[0] == 200
            trusted.request("GET", "/info", headers=auth)
            response = trusted.getresponse()
            assert response.status == 200 and response.read()
            assert trusted.sock is not None and trusted.sock.getsockname() == local  # the same connection
        finally:
            trusted.close()
            for sock in strangers:
                sock.close()


def test_trusted_connections_are_never_replaced_and_one_more_is_refused_503():
    with fedsync.serve(FedFloat(1.0), port=0, block=False, max_connections=2, token="s3cret") as server:
        held = [http.client.HTTPConnection(server.host, server.port, timeout=10) for _ in range(2)]
        for connection in held:
            connection.request("GET", "/info", headers={"Authorization": "Bearer s3cret"})
            assert connection.getresponse().read()
        with raw(server) as sock:
            sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = answer(sock)
        assert status == 503 and json.loads(body)["error"] == "too_many_connections"
        for connection in held:
            connection.close()


# -- item 1: a request body must keep a minimum rate ---------------------------------------------


@pytest.mark.parametrize("route", ["submit", "evaluate", "secagg/keys"])
def test_a_trickled_body_loses_its_place_and_honest_requests_get_through(route, monkeypatch):
    monkeypatch.setattr(gateway, "BODY_GRACE", 0.5)
    monkeypatch.setattr(gateway, "MIN_BODY_RATE", 1024)
    data = FedArrays({"w": np.zeros(4096, np.float32)})
    specs = data.specs(1)
    payload = bytes(data.serialize(1))
    with fedsync.serve(data, port=0, block=False) as server:
        trickler = raw(server)
        trickler.sendall(
            f"POST /1/{route} HTTP/1.1\r\nHost: x\r\n{SPECS_HEADER}: {specs}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
        )
        stop = threading.Event()

        def trickle() -> None:
            for _ in range(300):  # 10 bytes every 0.1 s, 100 B/s: at most 30 s
                if stop.wait(0.1):
                    return
                try:
                    trickler.sendall(b"\0" * 10)
                except OSError:
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            time.sleep(0.3)  # the trickler's body is being read
            status = None
            for _ in range(100):  # an honest evaluation, again while refused busy: bounded
                honest = raw(server)
                with honest:
                    honest.sendall(
                        f"POST /1/evaluate HTTP/1.1\r\nHost: x\r\n{SPECS_HEADER}: {specs}\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                    status, _, body = answer(honest)
                if status != 409:
                    break
                time.sleep(0.1)
            # FedArrays has no evaluation: 501 means the honest body was read and handed over.
            assert status == 501, body
            if route != "secagg/keys":  # a payload route: the trickler was cut with 408
                got, _, body = answer(trickler, "POST")
                assert got == 408 and json.loads(body)["error"] == "request_timeout", body
        finally:
            stop.set()
            thread.join(timeout=10)
            trickler.close()


# -- item 6: HTTP/1.0 keep-alive is announced ------------------------------------------------------


def test_http_1_0_keep_alive_is_announced_and_kept():
    with fedsync.serve(FedFloat(1.0), port=0, block=False) as server:
        with raw(server) as sock:
            for _ in range(2):
                sock.sendall(b"GET /info HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                status, headers, _ = answer(sock)
                assert status == 200 and headers.get("connection") == "keep-alive", headers
        with raw(server) as sock:  # without asking, HTTP/1.0 closes after the answer
            sock.sendall(b"GET /info HTTP/1.0\r\n\r\n")
            status, headers, _ = answer(sock)
            assert status == 200 and headers.get("connection") != "keep-alive"
            assert closed_by_peer(sock)
