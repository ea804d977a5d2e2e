"""Talking to a device process as a peer would, by hand: raw request bytes, posts with specs, its state from /info.

The device tests (tests/device/) use these to send what no well-behaved client sends and to check what changed.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import requests

from fedsync import FedArrays
from fedsync.wire.http import SPECS_HEADER


def address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a device URL."""
    parts = urlsplit(url)
    return parts.hostname, parts.port


def exchange(url: str, request: bytes, method: str = "GET", timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes as one request; the answer's status, headers and body."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, request: bytes) -> dict:
    """Check an answer is a 4xx JSON error with a code and a message; return it (``request`` names it on failure)."""
    assert 400 <= status < 500, (status, request[:200], body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (request[:200], headers, body[:300])
    answer = json.loads(body)
    assert isinstance(answer.get("error"), str) and answer["error"], (request[:200], answer)
    assert isinstance(answer.get("message"), str) and answer["message"], (request[:200], answer)
    return answer


def state(url: str, **kwargs) -> tuple:
    """``(repetition, state, rounds_served)`` from the device's /info (``kwargs`` go to requests, e.g. headers)."""
    info = requests.get(f"{url}/info", timeout=10, **kwargs).json()
    return info["repetition"], info["state"], info["rounds_served"]


def arrays_payload(n: int, value: float) -> tuple[bytes, str]:
    """A coordinator's payload for a ``{"w": n float32}`` model, and its specs."""
    data = FedArrays({"w": np.full(n, value, np.float32)})
    return bytes(data.serialize(1)), data.specs(1)


def post(url: str, path: str, body: bytes, specs: str, **kwargs) -> requests.Response:
    """POST a payload with its specs header to ``url + path`` (``headers=`` adds more)."""
    headers = {SPECS_HEADER: specs, "Content-Type": "application/octet-stream", **kwargs.pop("headers", {})}
    return requests.post(f"{url}{path}", data=body, headers=headers, timeout=60, **kwargs)


def wait_ready(url: str, rep: int) -> None:
    """Wait (at most 30 s) until the reply of repetition ``rep`` is ready on the device."""
    response = requests.head(f"{url}/{rep}/result", params={"wait": "30"}, timeout=60)
    assert response.status_code == 200, response.status_code


def until_not_busy(send, seconds: float = 10.0) -> requests.Response:
    """``send()`` again while the device answers 409 busy (a download's last bytes may still be leaving it)."""
    deadline = time.monotonic() + seconds
    while True:
        response = send()
        if response.status_code != 409 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)
