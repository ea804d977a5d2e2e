"""Devices that dial out (issue #20, the listening side): rounds through a Listener, its allow-list, resumes, bounds.

The devices here are tests/transports/dial/wire.py: the wire spoken with ``requests`` from other threads, each
job run by a real DeviceApp. Real HTTP over loopback to a real aiohttp server; real Federated rounds.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import numpy as np
import pytest
import requests

from fedsync import FedArrays, Federated, plugins
from fedsync.errors import RemoteTimeout, RemoteUnavailable
from fedsync.transports.dial import Listener
from fedsync.transports import dial
from fedsync.transports.dial import _server
from tests.support.processes import start_device, stop_all
from tests.transports.dial.wire import WireDevice, big

TOKENS = {"site-a": "token-a", "site-b": "token-b"}
N = 1 << 20


def zeros(n: int = N) -> FedArrays:
    return FedArrays({"w": np.zeros(n, np.float32)})


@pytest.fixture
def listener():
    with Listener("127.0.0.1", 0, devices=TOKENS) as running:
        yield running


@pytest.fixture
def dialed(listener):
    started: list[WireDevice] = []

    def start(name: str, value: float, cut: str = "") -> WireDevice:
        device = WireDevice(listener.url, name, TOKENS[name], big(value), cut=cut).start()
        started.append(device)
        return device

    yield start
    for device in started:
        device.close()


def post(listener, path, token=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{listener.url}/dial/1/{path}", headers=headers, timeout=10, **kwargs)


REGISTRATION = {"protocol": 1, "fedsync": "test", "bases": [""], "specs": {"": "arrays:sha256:0"}}


def test_a_round_over_dialed_in_devices_merges_exactly(listener, dialed):
    a, b = dialed("site-a", 1.0), dialed("site-b", 4.0)
    assert listener.wait_for(2, timeout=10) == ["site-a", "site-b"] == listener.connected()
    coordinator = zeros()
    plugins.reset()
    remotes = [plugins.remote("dial://site-a"), listener.remote("site-b")]  # through the registry, and directly
    with Federated(data=coordinator, remotes=remotes, timeout=30) as alg:
        result = alg.round()
    assert result.failures == {} and np.all(coordinator.model["w"] == 2.5)  # (1*2 + 4*2) / 4
    assert listener.stats("site-a")["bytes_sent"] >= 4 * N and listener.stats("site-a")["bytes_resent"] == 0
    assert a.errors == b.errors == []


def test_a_round_mixes_a_dialed_in_device_and_a_direct_one(listener, dialed):
    dialed("site-a", 1.0)
    listener.wait_for(1, timeout=10)
    direct = start_device("constant", 3.0, 2)  # a FedArrays w (3, 2), b (2,): the same model on both sides
    try:
        mixed = Listener("127.0.0.1", 0, devices={"site-c": "token-c"})
        try:
            device = WireDevice(mixed.url, "site-c", "token-c", _small(1.0)).start()
            coordinator = _small(0.0)
            with Federated(data=coordinator, remotes=[direct.url, mixed.remote("site-c")], timeout=30) as alg:
                result = alg.round()
            device.close()
        finally:
            mixed.close()
    finally:
        stop_all([direct])
    assert result.failures == {} and np.all(coordinator.model["w"] == 2.0) and np.all(coordinator.model["b"] == 2.0)


def _small(value: float) -> FedArrays:
    def train(model):
        for array in model.values():
            array[...] = value
        return 2, {"loss": value}

    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, train)


def test_a_name_not_on_the_allow_list_is_refused_and_changes_nothing(listener):
    answer = post(listener, "site-z/register", "token-a", json=REGISTRATION)
    assert answer.status_code == 403 and answer.json()["error"] == "not_allowed"
    assert "'site-z' is not on this coordinator's allow-list" in answer.json()["message"]
    assert listener.connected() == []


def test_a_wrong_or_missing_token_gets_401_and_another_name_cannot_be_taken(listener, dialed):
    missing = post(listener, "site-a/register", json=REGISTRATION)
    wrong = post(listener, "site-a/register", "token-x", json=REGISTRATION)
    assert (missing.status_code, missing.json()["message"]) == (401, "no token sent: pass --token")
    assert (wrong.status_code, wrong.json()["error"]) == (401, "unauthorized") and "site-a" in wrong.json()["message"]
    device = dialed("site-a", 1.0)
    session = device.session
    stolen = post(listener, "site-a/register", "token-b", json=REGISTRATION)  # site-b's token for site-a's name
    assert stolen.status_code == 401 and listener.connected() == ["site-a"]
    assert listener.hub.sessions["site-a"].id == session  # site-a's session is untouched


def test_another_devices_job_is_not_found_and_a_replaced_session_is_stale(listener, dialed):
    dialed("site-a", 1.0)
    intruder = WireDevice(listener.url, "site-b", TOKENS["site-b"], big(0.0))
    intruder.register()
    remote = listener.remote("site-a")
    assert remote.info()["specs"]  # a job of site-a's, answered
    job = listener.hub.submit("site-a", "dial://site-a", "GET", "/info", {}, None)
    for path in ("body", "answer"):
        answer = requests.get(intruder.route(f"jobs/{job.id}/{path}"), headers=intruder.headers(), timeout=10)
        assert answer.status_code in (404, 405)
        answer = requests.head(intruder.route(f"jobs/{job.id}/answer"), headers=intruder.headers(), timeout=10)
        assert answer.status_code == 404
    listener.hub.drop(job)
    old = intruder.session
    intruder.register()
    stale = requests.get(intruder.route("next"), headers={**intruder.headers(), "X-Fedsync-Session": old}, timeout=10)
    assert stale.status_code == 409 and stale.json()["error"] == "stale_session"


def test_requests_to_a_device_not_dialed_in_or_not_polling_fail_by_name(listener):
    with pytest.raises(RemoteUnavailable, match="site-a has not dialed in"):
        listener.remote("site-a").info()
    idle = WireDevice(listener.url, "site-a", TOKENS["site-a"], big(0.0))
    idle.register()  # registered, never polls
    with pytest.raises(RemoteTimeout, match="site-a did not fetch the request within 0.3 s"):
        listener.remote("site-a", timeout=0.3).info()


def test_registering_again_fails_the_earlier_sessions_requests_at_once(listener):
    device = WireDevice(listener.url, "site-a", TOKENS["site-a"], big(0.0))
    device.register()
    failed: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(failed, listener.remote("site-a", timeout=60).info))
    thread.start()
    for _ in range(200):  # the job is queued
        if listener.hub.jobs:
            break
        time.sleep(0.01)
    device.register()
    thread.join(10)
    assert not thread.is_alive() and isinstance(failed[0], RemoteUnavailable)
    assert "site-a registered again (restarted?) while this request was in flight" in str(failed[0])


def _capture(into: list, call) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test reads it
        into.append(exc)


@pytest.mark.parametrize("cut", ["upload", "download"])
def test_a_transfer_cut_at_half_resumes_and_the_model_is_exact(listener, dialed, cut, caplog):
    caplog.set_level("INFO", logger="fedsync.dial")
    dialed("site-a", 1.0)
    dialed("site-b", 3.0, cut=cut)
    listener.wait_for(2, timeout=10)
    coordinator = zeros()
    with Federated(data=coordinator, remotes=listener.remotes(), timeout=30) as alg:
        result = alg.round()
    assert result.failures == {} and np.all(coordinator.model["w"] == 2.0)
    stats = listener.stats("site-b")
    assert stats[f"resumed_{cut}s"] == 1 and listener.stats("site-a")[f"resumed_{cut}s"] == 0
    assert stats["bytes_resent"] < 4 * N  # at most what the cut connection's buffers held, never the whole body
    assert f"site-b resumed the {cut} of job" in caplog.text


@pytest.mark.slow  # waits out a 3 s round: the full suite runs it
def test_a_device_gone_mid_answer_is_its_failure_alone(listener, dialed):
    dialed("site-a", 1.0)
    dialed("site-b", 5.0, cut="vanish")
    listener.wait_for(2, timeout=10)
    coordinator = zeros()
    with Federated(data=coordinator, remotes=listener.remotes(timeout=3), timeout=3, min_results=1) as alg:
        result = alg.round()
    assert list(result.failures) == ["dial://site-b"] and np.all(coordinator.model["w"] == 1.0)


def test_a_listener_refuses_a_bad_allow_list_and_needs_aiohttp(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="device name '-x'"):
        Listener("127.0.0.1", 0, devices={"-x": "t"})
    with pytest.raises(ValueError, match="the token of 'a'"):
        Listener("127.0.0.1", 0, devices={"a": " "})
    twice = tmp_path / "devices.json"
    twice.write_text('{"a": "t", "a": "u"}')
    with pytest.raises(ValueError, match="the device 'a' twice"):
        Listener("127.0.0.1", 0, devices=twice)
    with pytest.raises(ValueError, match="no Listener running in this process allows 'nobody'"):
        plugins.remote("dial://nobody")
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    monkeypatch.delitem(sys.modules, "fedsync.transports.dial._server")
    monkeypatch.delattr(dial, "_server")
    with pytest.raises(ImportError, match=r"pip install 'fedsync\[dial\]'"):
        Listener("127.0.0.1", 0, devices={"a": "t"})


# -- the listening side faces the internet -------------------------------------------------------


def raw(listener, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection; everything answered until the listener closes it."""
    host, port = listener.url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)  # not shut: asyncio closes a connection whose peer half-closed
        chunks = []
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_hostile_requests_get_4xx_and_an_honest_round_completes(listener, dialed):
    honest = dialed("site-a", 2.0)
    auth = f"Authorization: Bearer {TOKENS['site-b']}\r\n".encode()

    def register(body: bytes, length: int | None = None) -> bytes:
        head = b"POST /dial/1/site-b/register HTTP/1.1\r\nHost: x\r\n" + auth
        return head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (len(body) if length is None else length) + body

    cases = {
        "oversized": (register(b"{}", 1 << 20), 413),
        "not_json": (register(b"{protocol"), 400),
        "duplicate_keys": (register(json.dumps(REGISTRATION)[:-1].encode() + b', "protocol": 1}'), 400),
        "nan": (register(json.dumps({**REGISTRATION, "protocol": float("nan")}).encode()), 400),
        "wrong_protocol": (register(json.dumps({**REGISTRATION, "protocol": 2}).encode()), 400),
        "no_length": (b"POST /dial/1/site-b/register HTTP/1.1\r\nHost: x\r\n" + auth
                      + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
        "too_many_headers": (b"GET /dial/1/site-b/next HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150))
                             + b"\r\n", 400),
        "header_too_long": (b"GET /dial/1/site-b/next HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 400),
        "unknown_route": (b"GET /dial/1/site-b/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        "wrong_method": (b"DELETE /dial/1/site-b/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
        "bad_wait": (b"GET /dial/1/site-a/next?wait=nan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-a\r\n"
                     b"X-Fedsync-Session: " + honest.session.encode() + b"\r\nConnection: close\r\n\r\n", 400),
    }  # fmt: skip
    for name, (request, expected) in cases.items():
        answer = raw(listener, request)
        assert answer, name
        assert status_of(answer) == expected, (name, answer[:300])
        if expected != 400 or name not in ("too_many_headers", "header_too_long"):  # aiohttp's own 400s are text
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"], (name, answer[:300])
    assert listener.connected() == ["site-a"]  # site-b never registered
    _ranges_and_offsets_are_checked(listener, honest)
    port = int(listener.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(500)]
    # While the round runs: slow heads (a byte at a time) and slow bodies (a registration trickling in).
    stop = threading.Event()
    slow_head = b"GET /dial/1/site-b/next HTTP/1.1\r\nHost: x\r\n" + b"X-Drip: y\r\n" * 40
    slow_body = b"POST /dial/1/site-b/register HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 8192\r\n\r\n" + b"{" * 200

    def trickle(data: bytes, every: float) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for index in range(len(data)):
                if stop.is_set():
                    return
                try:
                    sock.sendall(data[index : index + 1])
                except OSError:
                    return
                time.sleep(every)

    tricklers = [threading.Thread(target=trickle, args=(data, 0.05), daemon=True)
                 for data in (slow_head, slow_body) for _ in range(10)]  # fmt: skip
    for thread in tricklers:
        thread.start()
    try:
        coordinator = FedArrays({"w": np.zeros(N, np.float32)})
        with Federated(data=coordinator, remotes=[listener.remote("site-a")], timeout=30) as alg:
            result = alg.round()
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        for thread in tricklers:
            thread.join(timeout=10)
    assert result.failures == {} and np.all(coordinator.model["w"] == 2.0) and honest.errors == []


def _ranges_and_offsets_are_checked(listener, honest: WireDevice) -> None:
    """Bad Range and Upload-Offset values on a real job: 4xx, and the job's answer still arrives whole."""
    job = listener.hub.submit("site-a", "dial://site-a", "POST", "/9/evaluate", {}, b"x" * 100)
    with listener.hub.lock:
        listener.hub.sessions["site-a"].queue.remove(job)  # held back from the honest device's polls
    body = honest.route(f"jobs/{job.id}/body")
    for bad in ("bytes=100-", "bytes=-5", "bytes=a-", "bytes=1-2", "items=0-", "bytes=" + "9" * 30 + "-"):
        answer = requests.get(body, headers=honest.headers(Range=bad), timeout=10)
        assert (answer.status_code, answer.json()["error"]) == (416, "bad_range"), bad
    answer_route = honest.route(f"jobs/{job.id}/answer")
    head = {"X-Fedsync-Status": "200", "X-Fedsync-Headers": "{}", "Upload-Length": "10"}
    for bad, expected in (("-1", 400), ("1e3", 400), ("", 400), ("11", 400), ("5", 409)):
        answer = requests.post(answer_route, data=b"12345" if bad == "5" else b"", timeout=10,
                               headers=honest.headers(**head, **{"Upload-Offset": bad}))  # fmt: skip
        assert answer.status_code == expected, (bad, answer.text)
    for bad in ({"X-Fedsync-Status": "20"}, {"X-Fedsync-Headers": '{"a": "1", "a": "2"}'},
                {"X-Fedsync-Headers": '{"Bad Name": "1"}'}, {"Upload-Length": "+10"}):  # fmt: skip
        answer = requests.post(answer_route, data=b"", timeout=10, headers=honest.headers(**{**head, **bad, "Upload-Offset": "0"}))
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_answer"), bad
    listener.hub.drop(job)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_a_slow_head_and_a_slow_body_are_cut(monkeypatch):
    monkeypatch.setattr(_server, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(_server, "STALL", 0.5)
    with Listener("127.0.0.1", 0, devices=TOKENS) as listener:
        port = int(listener.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = b"GET /dial/1/site-a/next HTTP/1.1\r\nHost: x\r\n" + b"X-Drip: y\r\n" * 50
            cut = _drip(sock, head, every=0.05)
            assert cut, "a head dripped over 2.5 s was never cut (limit: 0.5 s)"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /dial/1/site-a/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-a\r\n"
                         b"Content-Length: 100\r\n\r\n{")  # fmt: skip
            answer = sock.recv(65536)  # the listener gives up on the body 0.5 s later
            assert status_of(answer) == 400 and b"truncated" in answer
        assert listener.connected() == []


def _drip(sock: socket.socket, data: bytes, every: float) -> bool:
    """Send ``data`` a byte at a time; whether the listener hung up before it was all sent."""
    for index in range(len(data)):
        try:
            sock.sendall(data[index : index + 1])
        except OSError:
            return True
        time.sleep(every)
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_connections_over_the_cap_get_503(listener):
    with Listener("127.0.0.1", 0, devices=TOKENS, max_connections=3) as capped:
        port = int(capped.url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            for _ in range(200):  # the three are accepted
                if capped.connections() == 3:
                    break
                time.sleep(0.01)
            answer = raw(capped, b"GET /dial/1/site-a/next HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(answer) == 503 and b"too_many_connections" in answer
        finally:
            for sock in held:
                sock.close()
