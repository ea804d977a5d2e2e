"""A device's connection failure reads as one line naming its cause, not urllib3's nested reprs.

Real sockets: a closed port (refused), a name under ``.invalid`` (never resolves, RFC 6761),
a server that resets every connection, one that never answers, one that speaks no TLS.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from fedsync.errors import RemoteTimeout, RemoteUnavailable, failure_reason
from fedsync.transports.remote import Remote


def one_line(exc: BaseException) -> str:
    reason = failure_reason(exc)
    assert "\n" not in reason and "object at 0x" not in reason and "Max retries" not in reason, reason
    assert len(reason) < 200, reason
    return reason


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server() -> Iterator:
    """``server(behaviour)``: a listening socket on 127.0.0.1 whose accepted connections get ``behaviour(conn)``."""
    listeners: list[socket.socket] = []

    def start(behaviour) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            for _ in range(20):  # bounded: the client retries a few times at most
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                behaviour(conn)

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for listener in listeners:
        listener.close()


def reset(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    conn.close()


def test_a_refused_connection_says_refused_on_one_line():
    with Remote(f"http://127.0.0.1:{closed_port()}", timeout=5) as remote, pytest.raises(RemoteUnavailable) as failed:
        remote.info()
    assert one_line(failed.value) == (
        "RemoteUnavailable: cannot connect: connection refused (is the device running, on this host and port?)"
    )


def test_an_unknown_host_says_dns():  # a resolver that times out would be a RemoteTimeout, still one line
    with (
        Remote("http://fedsync-device.invalid:8000", timeout=5) as remote,
        pytest.raises((RemoteUnavailable, RemoteTimeout)) as failed,
    ):
        remote.info()
    reason = one_line(failed.value)
    assert reason.startswith("RemoteUnavailable: cannot connect: DNS lookup of 'fedsync-device.invalid' failed (")


def test_a_reset_connection_says_reset(server):
    address = server(reset)
    with Remote(f"http://{address}", timeout=5) as remote, pytest.raises(RemoteUnavailable) as failed:
        remote.info()
    reason = one_line(failed.value)
    # Accepted, then reset: the connection was made, so it was lost during the request.
    assert reason.startswith("RemoteUnavailable: connection lost during the request: ")
    assert "connection reset by the device" in reason or "closed the connection without answering" in reason


def test_a_device_that_never_answers_says_timed_out_with_the_seconds(server):
    held: list[socket.socket] = []
    address = server(held.append)  # accepted, never answered
    try:
        with Remote(f"http://{address}", timeout=0.5) as remote, pytest.raises(RemoteTimeout) as failed:
            remote.info()
    finally:
        for conn in held:
            conn.close()
    assert one_line(failed.value).startswith("RemoteTimeout: timed out: no answer within ")


def test_https_to_a_plain_server_says_tls_on_one_line(server):
    def plain(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    address = server(plain)
    with Remote(f"https://{address}", timeout=5) as remote, pytest.raises(RemoteUnavailable) as failed:
        remote.info()
    assert one_line(failed.value).startswith("RemoteUnavailable: TLS handshake failed: ")
