"""A device that dials out (issue #20): a real FedArrays device against the fault-injecting test listener.

tests/support/dial_coordinator.py speaks the wire of docs/dial-out.md on its own (real HTTP on loopback);
each test arms one fault and checks the dialer's answer is exact and the dialer alive (or stopped, if refused).
"""

from __future__ import annotations

import json
import logging
import re
import time

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays
from fedsync.device import DeviceApp, DialRefused, RunningDialer
from fedsync.wire import codec
from tests.support.dial_coordinator import DialCoordinator

TOKEN = "token-a"


def trained(size: int) -> FedArrays:
    """A device whose training adds 1 to every weight and reports 7 samples."""

    def train(model):
        model["w"] += 1.0
        return 7

    return FedArrays({"w": np.zeros(size, np.float32)}, train)


def dialer(coordinator: DialCoordinator, data: FedArrays, name: str = "site-a", token: str = TOKEN) -> RunningDialer:
    """A dialer with short backoffs (no jitter), so a test waits for its reconnections in well under a second each."""
    return RunningDialer(
        DeviceApp(data), coordinator.url, name, token, backoff_factor=0.05, backoff_max=0.5, backoff_jitter=0
    )


@pytest.fixture
def coordinator():
    with DialCoordinator({"site-a": TOKEN, "site-b": "token-b"}, wait=1) as running:
        yield running


def submit(coordinator: DialCoordinator, weights: np.ndarray, rep: int = 1, **faults) -> tuple[object, bytes]:
    """Run one repetition through the dialed-in device: submit ``weights``, then fetch the result."""
    specs = coordinator.run("site-a", "GET", "/info").json()["specs"]
    payload = bytes(FedArrays({"w": weights}).serialize(rep))
    headers = {"X-Fedsync-Specs": specs, "Content-Type": "application/octet-stream"}
    submitted = coordinator.run(
        "site-a", "POST", f"/{rep}/submit", payload, headers=headers, cut_body_at=faults.get("cut_body_at")
    )
    assert submitted.status == 202, submitted.json()
    result = coordinator.run("site-a", "GET", f"/{rep}/result?wait=20", cut_answer_at=faults.get("cut_answer_at"))
    return submitted, result


def result_weights(job) -> np.ndarray:
    assert job.status == 200, bytes(job.answer[:300])
    assert int(job.headers["Content-Length"]) == job.upload_length == len(job.answer)
    return codec.decode(bytes(job.answer))[0]["w"]


def test_a_job_round_trip_is_exact(coordinator):
    data = trained(6)
    with fedsync.serve(data, connect=coordinator.url, name="site-a", token=TOKEN, block=False) as running:
        coordinator.wait_registered("site-a")
        registration = coordinator.registrations[0]
        assert registration["bases"] == [""] and registration["specs"][""] == data.specs(1)
        assert registration["protocol"] == 1
        weights = np.arange(6, dtype=np.float32)
        _, result = submit(coordinator, weights)
        np.testing.assert_array_equal(result_weights(result), weights + 1)
        assert result.headers["X-Fedsync-Repetition"] == "1"
        info = coordinator.run("site-a", "GET", "/info").json()
        assert info["rounds_served"] == 1 and running.connected


def test_a_head_job_uploads_no_body(coordinator):
    with dialer(coordinator, trained(6)):
        coordinator.wait_registered("site-a")
        submit(coordinator, np.zeros(6, np.float32))
        head = coordinator.run("site-a", "HEAD", "/1/result?wait=5")
        assert head.status == 200 and head.upload_length == 0 and head.answer == b""


def test_a_download_cut_at_half_resumes_with_a_range(coordinator, caplog):
    caplog.set_level(logging.INFO, logger="fedsync.server.dial")
    size = 400_000  # 1.6 MB: bigger than the answer kept in memory
    weights = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    with dialer(coordinator, trained(size)):
        coordinator.wait_registered("site-a")
        submitted, result = submit(coordinator, weights, cut_body_at=0.5)
        length = len(submitted.body)
        assert submitted.ranges == ["", f"bytes={length // 2}-"]
        resent = submitted.body_bytes_sent - length
        assert 0 <= resent < length // 10, (resent, length)
        np.testing.assert_array_equal(result_weights(result), weights + 1)
    assert f"resumed the download of a job's body at byte {length // 2} of {length}" in caplog.text


@pytest.mark.parametrize("size", [6, 400_000], ids=["small-answer-resent-from-memory", "large-answer-run-again"])
def test_an_upload_cut_at_half_resumes_from_the_listeners_offset(coordinator, caplog, size):
    caplog.set_level(logging.INFO, logger="fedsync.server.dial")
    weights = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    with dialer(coordinator, trained(size)):
        coordinator.wait_registered("site-a")
        _, result = submit(coordinator, weights, cut_answer_at=0.5)
        half = result.upload_length // 2
        assert result.offsets == [0, half] and result.heads == 1
        resent = result.answer_bytes_received - result.upload_length
        assert 0 <= resent < result.upload_length // 10
        np.testing.assert_array_equal(result_weights(result), weights + 1)
        # The device's reply is whole and still there: the coordinator can fetch it again.
        again = coordinator.run("site-a", "GET", "/1/result?wait=5")
        np.testing.assert_array_equal(result_weights(again), weights + 1)
    assert "resuming the upload of job" in caplog.text


@pytest.mark.parametrize(
    ("cut", "lie", "says"),
    [
        (0.5, {"Content-Range": "bytes 0-{last}/{length}"}, "Content-Range"),  # other bytes than those asked for
        (0.5, {"Content-Range": "bytes {half}-{last}/{more}"}, "Content-Range"),
        (None, {"Content-Length": "+{length}"}, "Content-Length"),
        (None, {"Content-Length": "{more}"}, "Content-Length"),
    ],
)
def test_a_listener_that_lies_about_the_body_is_not_believed(coordinator, cut, lie, says):
    with RunningDialer(
        DeviceApp(trained(6)),
        coordinator.url,
        "site-a",
        TOKEN,
        backoff_factor=0.005,
        backoff_max=0.01,
        backoff_jitter=0,
    ) as running:
        specs = coordinator.run("site-a", "GET", "/info").json()["specs"]
        payload = bytes(FedArrays({"w": np.ones(6, np.float32)}).serialize(1))
        length = len(payload)
        values = {"last": length - 1, "length": length, "half": length // 2, "more": length + 1}
        lies = {name: value.format(**values) for name, value in lie.items()}
        headers = {"X-Fedsync-Specs": specs, "Content-Type": "application/octet-stream"}
        job = coordinator.run("site-a", "POST", "/1/submit", payload, headers=headers, cut_body_at=cut, lie=lies)
        assert job.status == 400 and job.json()["error"] == "truncated" and says in job.json()["message"]
        assert coordinator.run("site-a", "GET", "/info").json()["state"] == "idle"  # nothing trained, alive
        assert running.error is None


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_a_refusal_while_downloading_a_body_stops_the_dialer_without_answering(coordinator, caplog):
    # The app passes up only its input's ConnectionError; a refusal met while reading the body must reach the
    # dialer as the refusal, not become the app's 500 uploaded to a listener that refuses this device.
    with RunningDialer(
        DeviceApp(trained(6)), coordinator.url, "site-a", TOKEN, backoff_factor=0.5, backoff_max=1, backoff_jitter=0
    ) as running:
        specs = coordinator.run("site-a", "GET", "/info").json()["specs"]
        payload = bytes(FedArrays({"w": np.ones(6, np.float32)}).serialize(1))
        headers = {"X-Fedsync-Specs": specs, "Content-Type": "application/octet-stream"}
        job = coordinator.send("site-a", "POST", "/1/submit", payload, headers=headers, cut_body_at=0.5)
        for _ in range(200):  # the first download is cut; the dialer waits 1 s before resuming
            if job.ranges:
                break
            time.sleep(0.01)
        coordinator.refuse = 403
        running.join(10)
        assert isinstance(running.error, DialRefused) and "not_allowed" in str(running.error)
        assert not any(path.endswith(f"/jobs/{job.id}/answer") for _, path in coordinator.requests)
    assert "error answering" not in caplog.text  # not taken for a bug of the device's app


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_reconnects_by_itself_when_the_coordinator_restarts(coordinator, caplog):
    caplog.set_level(logging.INFO, logger="fedsync.server.dial")
    with dialer(coordinator, trained(6)) as running:
        coordinator.wait_registered("site-a")
        coordinator.restart(down=1.0)
        coordinator.wait_registered("site-a", count=2)
        assert coordinator.run("site-a", "GET", "/info").status == 200
        assert running.error is None and running.registrations == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"lost the coordinator at {coordinator.url} (") and "retrying in" in m for m in messages)
    assert any(m.startswith(f"reconnected to {coordinator.url} after ") for m in messages), messages
    assert sum(m == f"registered with {coordinator.url} as site-a" for m in messages) == 2


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_a_stale_session_registers_again(coordinator, caplog):
    caplog.set_level(logging.INFO, logger="fedsync.server.dial")
    with dialer(coordinator, trained(6)):
        coordinator.wait_registered("site-a")
        # Once a poll came back (a second one started), the session is no longer fresh: a 409 then means
        # the listener forgot it (restarted), not that it refused the session it just gave.
        deadline = time.monotonic() + 15
        while sum(path.endswith("/next") for _, path in coordinator.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        coordinator.stale_next = 1
        coordinator.wait_registered("site-a", count=2)
        assert coordinator.run("site-a", "GET", "/info").status == 200
    assert "no longer knows this device's session" in caplog.text


@pytest.mark.parametrize(
    ("name", "token", "status", "says"),
    [
        ("site-z", TOKEN, 403, "allow-list"),
        ("site-a", "wrong-token", 401, "pass the token the coordinator holds"),
    ],
    ids=["name-not-allowed", "wrong-token"],
)
def test_a_refused_device_stops_with_a_clear_error(coordinator, caplog, name, token, status, says):
    running = dialer(coordinator, trained(6), name=name, token=token)
    try:
        running.join(timeout=20)
        assert isinstance(running.error, DialRefused) and isinstance(running.error, PermissionError)
        message = str(running.error)
        assert f"refused {name!r} ({status}" in message and says in message
        assert token not in message
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "fedsync.server.dial"]
        assert len(errors) == 1 and message in errors[0].getMessage()
        assert not running.connected
    finally:
        running.close()


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_a_refusal_after_registration_stops_the_dialer(coordinator):
    with dialer(coordinator, trained(6)) as running:
        coordinator.wait_registered("site-a")
        coordinator.refuse = 403
        running.join(timeout=20)
        assert isinstance(running.error, DialRefused) and "403" in str(running.error)


def test_serve_blocking_raises_the_refusal(coordinator):
    with pytest.raises(DialRefused, match="allow-list"):
        fedsync.serve(trained(6), connect=coordinator.url, name="nobody", token=TOKEN, block=True)


JOB = "0123456789abcdef0123456789abcdef"

BAD_JOBS = [
    ({"method": "DELETE"}, 400, "job method"),
    ({"method": "get"}, 400, "job method"),
    ({"target": "info"}, 400, "job target"),
    ({"target": "//evil/info"}, 400, "job target"),
    ({"target": "/in fo"}, 400, "job target"),
    ({"target": 5}, 400, "job target"),
    ({"headers": ["a"]}, 400, "job headers"),
    ({"headers": {"X-A": 1}}, 400, "job header"),
    ({"headers": {"X_A": "1"}}, 400, "job header"),
    ({"headers": {"X-A": "a\r\nInjected: 1"}}, 400, "control"),
    ({"length": -1}, 400, "job length"),
    ({"length": True}, 400, "job length"),
    ({"length": "10"}, 400, "job length"),
    ({"length": 1.5}, 400, "job length"),
    ({"length": 3 * 1024**3}, 413, "exceeds this device's limit"),
    ({"length": 4}, 400, "carries no body"),  # a GET with a body
]


@pytest.mark.parametrize(("fields", "status", "says"), BAD_JOBS, ids=[json.dumps(f)[:40] for f, _, _ in BAD_JOBS])
def test_a_malformed_job_is_answered_as_an_error_and_the_dialer_goes_on(coordinator, fields, status, says):
    with dialer(coordinator, trained(6)) as running:
        coordinator.wait_registered("site-a")
        spec = {"job": JOB, "method": "GET", "target": "/info", "headers": {}, "length": 0, **fields}
        bad = coordinator.run("site-a", "", "", spec=spec)
        assert bad.status == status, bytes(bad.answer)
        error = bad.json()
        assert error["error"] == ("too_large" if status == 413 else "bad_request") and says in error["message"]
        assert coordinator.run("site-a", "GET", "/info").status == 200  # alive
        assert running.error is None


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"job": "' + JOB.encode() + b'", "job": "x"}', b'{"job": "short"}', b"[1, 2]", b'{"length": NaN}'],
    ids=["not-json", "duplicate-key", "bad-id", "not-an-object", "nan"],
)
def test_a_job_that_cannot_be_answered_is_logged_and_the_dialer_goes_on(coordinator, caplog, raw):
    with dialer(coordinator, trained(6)) as running:
        coordinator.wait_registered("site-a")
        coordinator.send("site-a", "", "", spec=raw)
        assert coordinator.run("site-a", "GET", "/info").status == 200  # polled again after it
        assert running.error is None
    assert "cannot be answered" in caplog.text


def test_backoff_is_urllib3_retrys_doubling_capped():
    with DialCoordinator({"site-a": TOKEN}) as coordinator:
        running = RunningDialer(
            DeviceApp(trained(6)), coordinator.url, "site-a", TOKEN, backoff_factor=0.5, backoff_max=3, backoff_jitter=0
        )
        try:
            assert [running.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 3.0, 3.0, 3.0]
        finally:
            running.close()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"connect": "ftp://x:1"}, "is not http(s)://host"),
        ({"connect": "http://x:1/?q=1"}, "is not http(s)://host"),
        ({"connect": "http://x:99999"}, "bad port"),
        ({"name": ".hidden"}, "not allowed"),
        ({"name": "a/b"}, "not allowed"),
        ({"name": None}, "needs name="),
        ({"token": None}, "needs token="),
        ({"token": " "}, "token is empty"),
        ({"port": 9000}, "port is for a listening device"),
        ({"cert": ("missing.pem", "missing.key")}, "cert file not found"),
        ({"verify": "missing-ca.pem"}, "no such CA file"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs, says):
    arguments = {"connect": "http://127.0.0.1:9", "name": "site-a", "token": TOKEN, "block": False, **kwargs}
    with pytest.raises(ValueError, match=re.escape(says)):
        fedsync.serve(trained(6), **arguments)


def test_listening_options_are_refused_without_connect():
    with pytest.raises(ValueError, match="for dialing out"):
        fedsync.serve(trained(6), port=0, name="site-a", block=False)
