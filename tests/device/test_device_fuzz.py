"""Fuzzing a live device with random HTTP: no 5xx, no traceback, no change of state (issue #10).

Requests go over raw sockets, so request lines and headers can be anything:
random methods, targets (named bases, repetitions, ``..``, percent-escapes,
absolute URLs), versions, Host headers, Content-Length forms and bodies.
Derandomized and bounded, so CI runs the same examples every time in a few
seconds; a failure prints the offending request.
"""

from __future__ import annotations

import io
import json
import socket
import http.client

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import fedsync
from fedsync import FedArrays, Remote
from fedsync.wire.http import SPECS_HEADER
from tests.support.processes import start_device

SPECS = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}).specs(1)
BASES = [[""], ["/weights", "/extra"], [""]]  # of the fuzzed devices, in order
TIMEOUT = 5.0  # seconds per example: the device answers at once or the example fails


TOKEN = "s3cret"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """Devices at the root, with named bases, and behind a token, each logging stderr to a file."""
    folder = tmp_path_factory.mktemp("fuzz")
    started = [
        start_device("constant", 1.0, 3, log=folder / "root.log"),
        start_device("two_models", 1.0, 3, log=folder / "named.log"),
        start_device("constant", 1.0, 3, log=folder / "token.log", token=TOKEN),
    ]
    yield started
    for device in started:
        device.kill()


def snapshot(device, which: int) -> list:
    """(repetition, state, rounds_served) of each FedData the device serves."""
    auth = {"Authorization": f"Bearer {TOKEN}"} if which == 2 else {}
    infos = [requests.get(f"{device.url}{base}/info", headers=auth, timeout=10).json() for base in BASES[which]]
    return [(info["repetition"], info["state"], info["rounds_served"]) for info in infos]


# -- the request's parts --------------------------------------------------------------------

_printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
_latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")

methods = st.one_of(
    st.sampled_from(["GET", "POST", "HEAD"] * 4 + ["PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT", "get", "Post", "FOO", "G(T", "G\tT"]),
    st.text(_printable, min_size=1, max_size=8),
)
repetitions = st.one_of(
    st.integers(min_value=0, max_value=5).map(str),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.sampled_from(["0", "00001", str(2**53), str(2**53 + 1), "9" * 30, "1e3", "1.0", "\u0663", "%31", "+1", " 1"]),
)
segments = st.one_of(
    st.sampled_from(["", "info", "weights", "extra", "submit", "result", "evaluate", "..", ".", "%2e%2e", "%00", "%ff",
                     "%2F", "%", "%zz", "*", "%C0%AE", "~", "index.html"]),
    repetitions,
    st.text(_printable.filter(lambda c: c not in "?#"), max_size=12),
)
paths = st.lists(segments, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
queries = st.one_of(
    st.just(""),
    st.sampled_from(["0", "0.01", "nan", "inf", "-1", "1e999", "abc", "", "1" * 50]).map(lambda w: f"?wait={w}"),
    st.text(_printable, max_size=20).map(lambda q: "?" + q),
)
routes = st.tuples(
    st.sampled_from(["", "", "/weights", "/extra", "/nope", "/..", "/weights/.."]),
    repetitions,
    st.sampled_from(["submit", "result", "evaluate", "info", ""]),
).map(lambda parts: f"{parts[0]}/{parts[1]}/{parts[2]}")
def sane_lines(bases: list[str]) -> st.SearchStrategy[tuple[str, str]]:
    """(method, target) pairs that route on a device serving ``bases``, so requests reach each route's checks."""
    base = st.sampled_from(bases)
    return st.one_of(
        st.tuples(st.just("POST"), base, st.integers(0, 3), st.sampled_from(["submit", "evaluate"])),
        st.tuples(st.sampled_from(["GET", "HEAD"]), base, st.integers(0, 3), st.sampled_from(["result", "result?wait=0.01"])),
        st.tuples(st.sampled_from(["GET", "HEAD"]), base, st.none(), st.sampled_from(["info", ""])),
    ).map(lambda p: (p[0], f"{p[1]}/{p[3]}" if p[2] is None else f"{p[1]}/{p[2]}/{p[3]}"))


targets = st.one_of(
    st.tuples(st.one_of(routes, paths), queries).map("".join),
    st.tuples(st.sampled_from(["http://x", "http://[", "http://..", "https://127.0.0.1:1", "ftp://a", "http://[::1]"]), paths).map("".join),
    st.sampled_from(["*", "info", "", "//info", "/" + "a" * 20000]),
)
versions = st.sampled_from(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.x", "http/1.1", "HTTP/1", "", "HTTP/1.1 x"])
hosts = st.one_of(
    st.none(),
    st.just("127.0.0.1"),
    st.sampled_from(["x", "..", "a" * 100, "[::1]", "[", "127.0.0.1:99999", "", "a..b", "my_device:8000", "h\u00e9te"]),
    st.text(_latin1, max_size=30),
)


@st.composite
def length_headers(draw, body: bytes) -> list[str]:
    n = len(body)
    form = draw(st.sampled_from(["exact"] * 6 + ["none", "more", "less", "plus", "space", "list", "twice", "negative", "huge", "hex", "digits", "chunked"]))
    return {
        "exact": [f"Content-Length: {n}"],
        "none": [],
        "more": [f"Content-Length: {n + draw(st.integers(1, 10**6))}"],
        "less": [f"Content-Length: {max(0, n - draw(st.integers(1, 100)))}"],
        "plus": [f"Content-Length: +{n}"],
        "space": [f"Content-Length:   {n}  "],
        "list": [f"Content-Length: {n}, {n}"],
        "twice": [f"Content-Length: {n}", f"Content-Length: {n}"],
        "negative": [f"Content-Length: -{n}"],
        "huge": [f"Content-Length: {10 ** draw(st.integers(10, 60))}"],
        "hex": [f"Content-Length: {n:#x}"],
        "digits": ["Content-Length: \u0663"],
        "chunked": ["Transfer-Encoding: chunked"] + draw(st.sampled_from([[], [f"Content-Length: {n}"]])),
    }[form]


@st.composite
def requests_(draw, bases: list[str]) -> bytes:
    """Each part is well-formed two times in three, so a bad part often reaches the check meant for it."""

    def sane() -> bool:
        return draw(st.sampled_from([True, True, False]))

    body = draw(st.one_of(st.just(b""), st.binary(max_size=600), st.sampled_from([b"1.0", b"\x00" * 64, b"GET /info HTTP/1.1\r\n\r\n"])))
    method, target = draw(sane_lines(bases)) if sane() else (draw(methods), draw(targets))
    version = "HTTP/1.1" if sane() else draw(versions)
    line = f"{method} {target} {version}".rstrip()
    headers = []
    host = "127.0.0.1" if sane() else draw(hosts)
    if host is not None:
        headers.append(f"Host: {host}")
    headers += [f"Content-Length: {len(body)}"] if sane() else draw(length_headers(body))
    if sane() or draw(st.booleans()):
        headers.append(f"{SPECS_HEADER}: {draw(st.sampled_from([SPECS] * 4 + ['Float', '', 'x' * 300, 'arrays:sha256:0000000000000000']))}")
    for name, values in [
        ("Content-Type", st.sampled_from(["application/octet-stream", "text/plain", "text/plain; charset=latin-1", "", "a/b; x"])),
        ("Authorization", st.sampled_from(["Bearer ", "Bearer x", "Basic Zm9v", "", f"Bearer {TOKEN}", f"bearer {TOKEN} ", TOKEN])),
        ("Expect", st.sampled_from(["100-continue", "nothing"])),
        ("Connection", st.sampled_from(["close", "keep-alive", "upgrade"])),
        (draw(st.text(_printable, min_size=1, max_size=12)), st.text(_latin1, max_size=40)),
    ]:
        if draw(st.booleans()):
            headers.append(f"{name}: {draw(values)}")
    head = "\r\n".join([line, *headers]) + "\r\n\r\n"
    return head.encode("latin-1", "replace") + body


# -- the check ------------------------------------------------------------------------------


class _Unclosable(io.BytesIO):
    def close(self) -> None:  # http.client closes its file after each response; the next one follows
        pass


class _Recorded:
    """A socket stand-in that replays recorded bytes to http.client's parser."""

    def __init__(self, data: bytes) -> None:
        self.file = _Unclosable(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self.file


def answers(url: str, request: bytes) -> list[tuple[int, dict, bytes]]:
    """Send ``request``, half-close, read until the device closes: every response, parsed."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)  # a body shorter than announced ends here, not at a timeout
        except OSError:
            pass  # the device answered and closed before taking everything: read what it said
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    recorded = _Recorded(data)
    parsed = []
    method = request.split(b" ", 1)[0].decode("latin-1")
    while recorded.file.tell() < len(data):
        response = http.client.HTTPResponse(recorded, method=method if not parsed else "GET")  # type: ignore[arg-type]
        response.begin()
        parsed.append((response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()))
    return parsed


@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 2), data=st.data())
def test_random_http_gets_no_5xx_no_traceback_and_changes_nothing(fuzzed, which, data):
    device = fuzzed[which]
    request = data.draw(requests_(BASES[which]), label="request")
    note(f"device {device.url} ({device.log.name}), request: {request[:600]!r}")
    before = snapshot(device, which)
    responses = answers(device.url, request)
    assert responses, "the device closed without answering"
    for status, headers, body in responses:
        event(f"status {status}")
        assert 100 <= status < 500, (status, body[:300])
        if status >= 400:
            assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
            if body:
                error = json.loads(body)
                assert error["error"] and error["message"], error
    assert snapshot(device, which) == before
    log = device.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


@pytest.mark.slow  # ~1.1 s: keeps the fast tier under 90 s
def test_after_the_fuzzing_every_device_completes_a_normal_round(fuzzed):
    root, named, tokened = fuzzed
    model = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})
    remotes = [Remote(root.url), Remote(named.url + "/weights"), Remote(named.url + "/extra"), Remote(tokened.url, token=TOKEN)]
    with fedsync.Federated(data=model, remotes=remotes) as alg:
        result = alg.round()
    assert not result.failures
    np.testing.assert_allclose(model.model["w"], (1.0 + 1.0 + 2.0 + 1.0) / 4)
    for device in fuzzed:
        assert "Traceback" not in device.log_text()
