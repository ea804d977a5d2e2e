"""A device holds up against broken or hostile peers (issue #10, the device's side).

Every test talks real HTTP to a real device process (tests/support/run_device.py):

- kind 1: a reply is a snapshot of what training produced, whatever arrives mid-download;
- kind 5: the device's memory stays bounded whatever bodies peers send at once;
- kind 6: bad HTTP gets a 4xx JSON answer, no traceback in the log, no change of state;
- kind 7: tokens cannot be empty, and a request without one learns nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

import fedsync
from fedsync import FedArrays
from fedsync.device import DeviceApp
from fedsync.wire import codec
from fedsync.wire.http import SPECS_HEADER
from tests.device.factories import zeros_mib_spec
from tests.support.device_http import address, arrays_payload, assert_json_error, exchange, post, state, until_not_busy, wait_ready
from tests.support.processes import ROOT, start_device
from tests.support.devices.basic import pattern
from tests.support.seed_fedfloat import FedFloat

BIG = 1 << 24  # float32 values: a 64 MiB reply, far more than loopback's socket buffers hold
MiB = 1 << 20


# -- kind 1: a reply is a snapshot ----------------------------------------------------------


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_writes_are_refused_while_a_reply_downloads_from_live_memory(devices):
    device = devices("patterned", BIG)
    url = device.url
    payload, specs = arrays_payload(BIG, 0.0)
    assert post(url, "/1/submit", payload, specs).status_code == 202
    wait_ready(url, 1)
    download = requests.get(f"{url}/1/result", stream=True, timeout=60)
    try:
        assert download.status_code == 200 and download.headers["X-Fedsync-Repetition"] == "1"
        # One piece only: the device is still writing the rest (64 MiB > the socket buffers).
        pieces = [download.raw.read(MiB)]
        other, other_specs = arrays_payload(BIG, 7.0)
        evaluate = post(url, "/1/evaluate", other, other_specs)
        assert evaluate.status_code == 409 and evaluate.json()["error"] == "busy", evaluate.text
        assert "downloaded" in evaluate.json()["message"]
        second = post(url, "/2/submit", other, other_specs)  # a second coordinator
        assert second.status_code == 409 and second.json()["error"] == "busy", second.text
        while piece := download.raw.read(4 * MiB):  # slowly, in pieces
            pieces.append(piece)
    finally:
        download.close()
    arrays, metadata = codec.decode(b"".join(pieces))
    np.testing.assert_array_equal(arrays["w"], pattern(BIG, 1))
    assert metadata["fedsync.samples"] == "5"
    assert state(url) == (1, "idle", 1)
    # Once read, the model is writable again: at once, the device released it before its last bytes left.
    assert post(url, "/2/submit", other, other_specs).status_code == 202


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
@pytest.mark.parametrize("n", [1000, 1 << 20])
def test_a_write_right_after_a_whole_download_is_never_busy(devices, n):
    """A coordinator that read the whole reply and at once asks for an evaluation (a new
    connection) must find the model writable: the device stops reading live memory
    before the reply's last bytes leave it."""
    device = devices("patterned", n)
    payload, specs = arrays_payload(n, 0.0)
    for rep in range(1, 21):
        assert post(device.url, f"/{rep}/submit", payload, specs).status_code == 202
        reply = requests.get(f"{device.url}/{rep}/result", params={"wait": "30"}, timeout=60)
        assert reply.status_code == 200 and len(reply.content) == int(reply.headers["Content-Length"])
        evaluate = post(device.url, f"/{rep}/evaluate", payload, specs)
        assert evaluate.status_code == 200, (rep, evaluate.text)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_a_client_leaving_mid_download_releases_the_model(devices):
    device = devices("patterned", BIG)
    payload, specs = arrays_payload(BIG, 0.0)
    assert post(device.url, "/1/submit", payload, specs).status_code == 202
    wait_ready(device.url, 1)
    with socket.create_connection(address(device.url), timeout=10) as sock:
        sock.sendall(b"GET /1/result HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(MiB).startswith(b"HTTP/1.1 200")
        busy = post(device.url, "/2/submit", payload, specs)
        assert busy.status_code == 409 and "downloaded" in busy.json()["message"]
    # The client hung up after a few bytes: the device's send fails and its count drops.
    assert until_not_busy(lambda: post(device.url, "/2/submit", payload, specs)).status_code == 202


def test_a_reply_read_again_after_an_evaluate_that_does_not_restore_is_unchanged(devices, tmp_path):
    n = 1 << 18
    hold = tmp_path / "release"
    device = devices("patterned", n, False, str(hold))
    url = device.url
    payload, specs = arrays_payload(n, 0.0)
    assert post(url, "/1/submit", payload, specs).status_code == 202
    wait_ready(url, 1)
    first = requests.get(f"{url}/1/result", timeout=60)
    assert first.status_code == 200
    other, _ = arrays_payload(n, 7.0)
    answers = []
    evaluating = threading.Thread(target=lambda: answers.append(until_not_busy(lambda: post(url, "/1/evaluate", other, specs))))
    evaluating.start()
    try:
        # While the evaluation holds the model (its values 7.0 written), a download reads the snapshot.
        deadline = time.monotonic() + 30
        # The probe changes nothing: wrong specs, and "busy" is decided before the specs.
        while "evaluating" not in (refused := post(url, "/1/evaluate", b"x", "probe")).text:
            assert refused.json()["error"] == "specs_mismatch" and time.monotonic() < deadline, refused.text
            time.sleep(0.02)
        during = requests.get(f"{url}/1/result", timeout=60)
    finally:
        hold.touch()
        evaluating.join(timeout=60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert answers[0].json()["metrics"] == {"first": 7.0}  # it did evaluate the coordinator's values
    after = requests.get(f"{url}/1/result", timeout=60)
    for response in (during, after):
        assert response.status_code == 200 and response.headers["X-Fedsync-Repetition"] == "1"
        assert response.content == first.content
    np.testing.assert_array_equal(codec.decode(after.content)[0]["w"], pattern(n, 1))


def test_a_round_copies_nothing_and_still_merges_the_trained_values(devices):
    device = devices("patterned", 1000)
    coordinator = FedArrays({"w": np.zeros(1000, np.float32)})
    with fedsync.Federated(data=coordinator, remotes=[device.url]) as alg:
        for k in (1, 2):
            alg.round()
            np.testing.assert_array_equal(coordinator.model["w"], pattern(1000, k))


# -- kind 5: memory bounded whatever peers send ----------------------------------------------

BODY = 64 * MiB
PEERS = 32
BOUND = 400 * MiB  # far below PEERS * BODY (2 GiB): at most one body is ever held


def flood(url: str, path: str, headers: dict[str, str], peers: int = PEERS) -> list[tuple[int, dict]]:
    """``peers`` concurrent POSTs of a BODY-byte body each; every answer (status, JSON).

    Each peer sends its body 1 MiB at a time until the device answers: a device
    that reads bodies before answering receives them whole.
    """
    chunk = memoryview(bytes(MiB))
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "x", "Content-Length": str(BODY), **headers}.items())
    request = f"POST {path} HTTP/1.1\r\n{head}\r\n".encode()
    answers: list = [None] * peers
    start = threading.Barrier(peers)

    def peer(index: int) -> None:
        with socket.create_connection(address(url), timeout=60) as sock:
            start.wait(timeout=60)
            sock.sendall(request)
            sent = 0
            try:
                while sent < BODY and not _readable(sock):
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the device answered and stopped reading: the answer waits in our socket
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            answers[index] = (response.status, json.loads(response.read()))

    threads = [threading.Thread(target=peer, args=(i,)) for i in range(peers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(answer is not None for answer in answers), answers
    return answers


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_concurrent_large_submissions_without_the_token_hold_no_body(devices):
    device = devices("constant", 1.0, 1, token="s3cret")
    before = device.peak_rss()
    spec = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}).specs(1)
    answers = flood(device.url, "/1/submit", {SPECS_HEADER: spec, "Content-Type": "application/octet-stream"})
    assert {(status, answer["error"]) for status, answer in answers} == {(401, "unauthorized")}
    assert device.peak_rss() - before < BOUND, (before, device.peak_rss())
    assert state(device.url, headers={"Authorization": "Bearer s3cret"}) == (0, "idle", 0)


def test_concurrent_large_submissions_are_read_one_at_a_time(devices):
    # A model as large as the bodies: a smaller one would refuse them 413 from their length alone.
    device = devices("tests.device.factories:zeros_mib", BODY // MiB)
    before = device.peak_rss()
    spec = zeros_mib_spec(BODY // MiB)
    answers = flood(device.url, "/1/submit", {SPECS_HEADER: spec, "Content-Type": "application/octet-stream"})
    # Zeros are no payload: whoever got read is refused as malformed, the others as busy, unread.
    assert {status for status, _ in answers} <= {400, 409}, answers
    assert {answer["error"] for _, answer in answers} <= {"malformed_payload", "busy"}, answers
    assert device.peak_rss() - before < BOUND, (before, device.peak_rss())
    assert state(device.url) == (0, "idle", 0)


def test_evaluate_bodies_sent_while_training_are_refused_unread(devices, tmp_path):
    release = tmp_path / "release"
    device = devices("blocked", str(release))
    try:
        payload, specs = arrays_payload(4, 0.0)
        assert post(device.url, "/1/submit", payload, specs).status_code == 202
        before = device.peak_rss()
        answers = flood(device.url, "/1/evaluate", {SPECS_HEADER: specs, "Content-Type": "application/octet-stream"})
        assert {(status, answer["error"]) for status, answer in answers} == {(409, "busy")}, answers
        assert all("training" in answer["message"] for _, answer in answers)
        assert device.peak_rss() - before < BOUND, (before, device.peak_rss())
    finally:
        release.touch()
    wait_ready(device.url, 1)
    assert state(device.url) == (1, "idle", 1)


@pytest.mark.parametrize("route", ["submit", "evaluate", "result"])
def test_a_repetition_above_the_maximum_is_refused(devices, route):
    device = devices("constant", 1.0, 1)
    model = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    payload, specs = bytes(model.serialize(1)), model.specs(1)
    method = "GET" if route == "result" else "POST"
    for rep in ("99999999999999999999999", str(2**53 + 1), "9" * 5000):
        request = (
            f"{method} /{rep}/{route} HTTP/1.1\r\nHost: x\r\n{SPECS_HEADER}: {specs}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode() + payload
        answer = assert_json_error(*exchange(device.url, request), request)
        assert answer["error"] == "bad_repetition", answer
    assert state(device.url) == (0, "idle", 0)


# -- kind 6: bad HTTP -------------------------------------------------------------------------

H = b"Host: x\r\n"
BAD_REQUESTS = {
    "host_dotdot": (b"GET /info HTTP/1.1\r\nHost: ..\r\n\r\n", 400),
    "host_label_100": (b"GET /info HTTP/1.1\r\nHost: " + b"a" * 100 + b".example\r\n\r\n", 400),
    "host_twice": (b"GET /info HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "host_garbage": (b"GET /info HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
    "absolute_bad_ipv6": (b"GET http://[/info HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute_bad_host": (b"GET http://../info HTTP/1.1\r\n" + H + b"\r\n", 400),
    "relative_target": (b"GET info HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method_trace": (b"TRACE /info HTTP/1.1\r\n" + H + b"\r\n", 405),
    "method_foo": (b"FOO /info HTTP/1.1\r\n" + H + b"\r\n", 405),
    "method_lowercase": (b"get /info HTTP/1.1\r\n" + H + b"\r\n", 405),
    "method_put": (b"PUT /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n", 405),
    "method_not_a_token": (b"G(T /info HTTP/1.1\r\n" + H + b"\r\n", 400),
    "http_0_9": (b"GET /info\r\n", 400),
    "http_2": (b"GET /info HTTP/2.0\r\n" + H + b"\r\n", 400),
    "http_version_garbage": (b"GET /info HTTP/1.x\r\n" + H + b"\r\n", 400),
    "request_line_four_words": (b"GET /info HTTP/1.1 extra\r\n" + H + b"\r\n", 400),
    "request_line_blank": (b"   \r\n", 400),
    "chunked": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\n1.0\r\n0\r\n\r\n", 411),
    "chunked_and_length": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1.0", 411),
    "length_plus": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\n1.0", 400),
    "length_negative": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: -3\r\n\r\n1.0", 400),
    "length_list": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\n1.0", 400),
    "length_twice": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\n1.0", 400),
    "length_hex": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\n1.0", 400),
    "length_underscore": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 1_0\r\n\r\n1.0", 400),
    "length_other_digits": (b"POST /1/submit HTTP/1.1\r\n" + H + "Content-Length: \u0663\r\n\r\n1.0".encode("utf-8"), 400),
    "length_huge": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n1.0", 413),
    "length_above_limit": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 99999999999\r\n\r\n1.0", 413),
    "length_missing": (b"POST /1/submit HTTP/1.1\r\n" + H + SPECS_HEADER.encode() + b": x\r\n\r\n", 411),
    "length_missing_evaluate": (b"POST /1/evaluate HTTP/1.1\r\n" + H + SPECS_HEADER.encode() + b": x\r\n\r\n", 411),
    "uri_too_long": (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    "too_many_headers": (b"GET /info HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n", 431),
    "headers_too_large": (b"GET /info HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"y" * 2000) for i in range(40)) + b"\r\n", 431),
    "header_line_too_long": (b"GET /info HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431),
    "path_invalid_utf8_nul": (b"GET /%ff%00/info HTTP/1.1\r\n" + H + b"\r\n", 404),
    "path_dotdot": (b"GET /../../etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 404),
    "path_encoded_slash": (b"GET /1%2Fsubmit HTTP/1.1\r\n" + H + b"\r\n", 405),
    "repetition_other_digits": ("GET /\u0663/result HTTP/1.1\r\n".encode("utf-8") + H + b"\r\n", 404),
    "repetition_unknown": (b"GET /7/result HTTP/1.1\r\n" + H + b"\r\n", 404),
    "wait_nan": (b"GET /1/result?wait=nan HTTP/1.1\r\n" + H + b"\r\n", 404),
    "options_star": (b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 404),
    "missing_specs": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\n1.0", 400),
    "wrong_specs": (b"POST /1/submit HTTP/1.1\r\n" + H + SPECS_HEADER.encode() + b": \xff\xfe\r\nContent-Length: 3\r\n\r\n1.0", 409),
    "expect_continue_refused": (b"POST /1/submit HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n", 400),
    "body_on_get": (b"GET /nowhere HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"z" * 100000, 404),
}


@pytest.fixture(scope="module")
def device_log(tmp_path_factory):
    """One FedArrays device for every bad request of this module, its stderr in a file."""
    log = tmp_path_factory.mktemp("device") / "stderr.log"
    device = start_device("constant", 1.0, 3, log=log)
    yield device
    device.kill()


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_http_gets_a_4xx_json_answer_and_changes_nothing(device_log, name):
    request, status = BAD_REQUESTS[name]
    before = state(device_log.url)
    answer = exchange(device_log.url, request)
    assert answer[0] == status, (name, answer)
    assert_json_error(*answer, request)
    assert state(device_log.url) == before
    assert "Traceback" not in device_log.log_text() and " ERROR " not in device_log.log_text()


ROUTES = ["/", "/info", "/1/submit", "/1/result", "/1/evaluate", "/nowhere"]


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT", "get", "post"])
def test_every_method_on_every_route_answers_4xx_json_or_serves(device_log, method):
    before = state(device_log.url)
    for route in ROUTES:
        request = f"{method} {route} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        status, headers, body = exchange(device_log.url, request, method=method)
        if method == "HEAD" and route in ("/", "/info"):
            assert status == 200 and body == b""
            continue
        assert 400 <= status < 500, (method, route, status)
        assert headers["content-type"].startswith("application/json"), (method, route, headers)
        if method != "HEAD":  # a HEAD answer never has a body
            assert_json_error(status, headers, body, request)
        # HEAD /1/submit is a route: the offset of a broken submission (404 unknown_upload when none is held).
        expected = 404 if route == "/nowhere" else 405 if method != "HEAD" or route == "/1/evaluate" else 404
        assert status == expected, (method, route, status, body)
    assert state(device_log.url) == before
    assert "Traceback" not in device_log.log_text()


def test_header_bytes_outside_latin1_and_absolute_targets_are_served(device_log):
    for request in (
        b"GET /info HTTP/1.1\r\nHost: x\r\nX-Note: \xff\xfe\xc3\xa9\r\n\r\n",
        b"GET http://127.0.0.1:1/info HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\nGET /info HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",  # one empty line before a request is allowed
        b"GET /info HTTP/1.0\r\n\r\n",  # HTTP/1.0 needs no Host
        b"GET /info HTTP/1.1\r\nHost: my_device.lan:8000\r\nX_Fedsync_Specs: ignored\r\n\r\n",
    ):
        status, _, body = exchange(device_log.url, request)
        assert status == 200 and json.loads(body)["specs"], (request, status, body)


def test_a_bad_request_then_a_normal_round(device_log):
    for request, _ in BAD_REQUESTS.values():
        exchange(device_log.url, request)
    coordinator = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    with fedsync.Federated(data=coordinator, remotes=[device_log.url]) as alg:
        result = alg.round()
    assert not result.failures and np.all(coordinator.model["w"] == 1.0)
    assert "Traceback" not in device_log.log_text()


def test_a_text_fed_data_without_a_content_length_gets_411(devices):
    device = devices("fedfloat", 2.5)
    request = f"POST /1/submit HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n{SPECS_HEADER}: Float\r\n\r\n".encode()
    answer = assert_json_error(*exchange(device.url, request), request)
    assert answer["error"] == "length_required"
    assert state(device.url) == (0, "idle", 0)


def test_a_busy_answer_reaches_a_client_still_sending_its_body(devices, tmp_path):
    # The device refuses unread, then drains the rest: closing on unread bytes would
    # reset the connection and destroy the answer before the client reads it.
    release = tmp_path / "release"
    device = devices("blocked", str(release))
    try:
        payload, specs = arrays_payload(4, 0.0)
        assert post(device.url, "/1/submit", payload, specs).status_code == 202
        body = bytes(32 * MiB)
        head = f"POST /2/submit HTTP/1.1\r\nHost: x\r\n{SPECS_HEADER}: {specs}\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(address(device.url), timeout=30) as sock:
            sock.sendall(head.encode() + body)  # the whole body, as a simple client does
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            assert response.status == 409 and json.loads(response.read())["error"] == "busy"
    finally:
        release.touch()


# -- kind 7: tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", " ", "\n", " \t\n", "s3\ncret", "s3\x00cret", "t\u00f6ken", "\u2028"])
def test_an_empty_or_unprintable_token_is_refused_at_start_up(token):
    with pytest.raises(ValueError, match="token"):
        fedsync.serve(FedFloat(1.0), port=0, block=False, token=token)
    with pytest.raises(ValueError, match="token"):
        DeviceApp(FedFloat(1.0), token=token)


def test_a_token_read_from_a_file_is_stripped(devices):
    device = devices("constant", 1.0, 1, token="s3cret\n")
    assert requests.get(f"{device.url}/info", headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 200
    for header in ("Bearer s3cret\n", "Bearer", "Bearer ", "Basic s3cret", "s3cret", "Bearer s3cre", "Bearer s3cret s3cret"):
        request = f"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: {header.strip()}\r\n\r\n".encode()
        status, _, body = exchange(device.url, request)
        assert status == (200 if header.strip() == "Bearer s3cret" else 401), (header, status)
    assert exchange(device.url, b"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: bearer  s3cret \r\n\r\n")[0] == 200


def test_without_the_token_every_route_answers_the_same_401(devices):
    device = devices("mixed", 1.0, 1, 0.5, token="s3cret")
    answers = set()
    for method, path in [("GET", "/info"), ("GET", "/weights/info"), ("GET", "/nothing/info"), ("GET", "/weights/1/result"),
                         ("POST", "/threshold/1/submit"), ("POST", "/nothing/1/submit"), ("FOO", "/weights/info"), ("GET", "/")]:
        request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        status, _, body = exchange(device.url, request)
        answers.add((status, body))
    assert len(answers) == 1 and next(iter(answers))[0] == 401, answers
    ok = requests.get(f"{device.url}/weights/info", headers={"Authorization": "Bearer s3cret"}, timeout=10)
    assert ok.status_code == 200


def test_tokens_are_compared_in_constant_time(monkeypatch):
    from fedsync.device import app as server

    calls = []
    original = server.hmac.compare_digest
    monkeypatch.setattr(server.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or original(a, b))
    from werkzeug.test import Client

    client = Client(DeviceApp(FedFloat(1.0), token="s3cret"))
    assert client.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert calls == [(b"wrong", b"s3cret"), (b"s3cret", b"s3cret")]


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_the_cli_refuses_an_empty_token_from_the_environment(tmp_path, value):
    (tmp_path / "device.py").write_text("from tests.support.seed_fedfloat import FedFloat\ndata = FedFloat(1.0)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEDSYNC_TOKEN=value)
    done = subprocess.run(
        [sys.executable, "-m", "fedsync", "serve", "device.py:data", "--port", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert "serving" not in done.stdout
    assert "token" in done.stderr and "empty" in done.stderr, done.stderr
