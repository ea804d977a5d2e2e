"""What a device answers as JSON is strict JSON: a key given twice or NaN/Infinity is that device's failure.

Python's ``json`` keeps the last of two equal keys (other parsers keep the first) and reads ``NaN``
and ``Infinity``, which are not JSON. The hostile devices answer over real HTTP
(``tests/support/hostile.py``); the worker-process frames come from a real child process.
"""

import io
import os
import struct
import sys

import numpy as np
import pytest

import fedsync
from fedsync import Federated, Remote
from fedsync.errors import PayloadRejected, RemoteBusy, RemoteError, RemoteTimeout
from fedsync.transports.base import BytesAnswer, Transport
from fedsync.transports.process._frames import FrameError, read_frame
from fedsync.transports.process.pool import _Process
from fedsync.wire.transfer import Deadline
from tests.support.processes import ROOT
from tests.support import hostile
from tests.support.devices.basic import setting, zeros


def hostile_url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize(
    "repetition, why",
    [
        ('0, "repetition": 5', "/info answered the key 'repetition' twice"),
        ("NaN", "/info answered NaN for the key 'repetition', not a finite number"),
        ("-Infinity", "/info answered -Infinity for the key 'repetition', not a finite number"),
    ],
    ids=["duplicate", "nan", "-infinity"],
)
def test_an_info_answer_with_a_key_twice_or_a_constant_is_that_devices_failure(repetition, why):
    healthy = fedsync.serve(setting(2.0), port=0, block=False)
    bad = hostile.serve("info", {"repetition": repetition})
    data = zeros()
    try:
        with Federated(data, [healthy.url, hostile_url(bad)], min_results=1, timeout=20) as alg:
            result = alg.round()
        assert result.answered == [healthy.url] and list(result.failures) == [hostile_url(bad)]
        assert why in result.failures[hostile_url(bad)], result.failures
        assert np.all(data.model["w"] == 2.0)  # the honest device's reply was merged
        assert alg.history.rounds[-1].failures == result.failures
        assert bad.device.app.devices[""].last_repetition == 0  # nothing was submitted to it
    finally:
        healthy.close()
        bad.shutdown()
        bad.server_close()


@pytest.mark.parametrize(
    "answer, why",
    [
        ('{"samples": 4, "metrics": {"accuracy": 0.5}, "samples": 4000}', "evaluation answered the key 'samples' twice"),
        ('{"samples": 4, "metrics": {"accuracy": 0.5, "accuracy": 0.9}}', "evaluation answered the key 'accuracy' twice"),
        ('{"samples": 4, "metrics": {"accuracy": NaN}}', "evaluation answered NaN for the key 'accuracy'"),
        ('{"samples": 4, "metrics": {"accuracy": [1, [Infinity]]}}', "evaluation answered Infinity for the key 'accuracy'"),
        ("NaN", "evaluation answered NaN, not a finite number"),
    ],
    ids=["samples-twice", "metric-twice", "nan-metric", "infinity-in-a-list", "nan-alone"],
)
def test_an_evaluation_answer_with_a_key_twice_or_a_constant_is_refused(answer, why):
    bad = hostile.serve("eval", {"answer": answer})
    try:
        with pytest.raises(RemoteError) as refused:
            Remote(hostile_url(bad)).evaluate(1, zeros().serialize(1), zeros().specs(1))
        assert why in str(refused.value)
    finally:
        bad.shutdown()
        bad.server_close()


@pytest.mark.parametrize(
    "status, body, why",
    [
        (409, '{"error": "training_failed", "error": "busy", "message": "wait"}', "the key 'error' twice"),
        (409, '{"error": "busy", "message": "wait", "retry": NaN}', "NaN for the key 'retry'"),
        (400, '{"error": "malformed_payload", "message": "no", "message": "yes"}', "the key 'message' twice"),
    ],
    ids=["error-twice", "nan", "message-twice"],
)
def test_a_refusal_whose_body_is_not_strict_json_is_read_as_a_plain_http_error(status, body, why):
    bad = hostile.serve("refuse", {"status": status, "body": body})
    data = zeros()
    try:
        with pytest.raises((RemoteError, PayloadRejected)) as refused:
            Remote(hostile_url(bad)).submit(1, data.serialize(1), data.specs(1))
        assert not isinstance(refused.value, RemoteBusy)  # its code was not believed
        assert f"HTTP {status} http_error" in str(refused.value) or f"({status} http_error)" in str(refused.value)
        assert why in str(refused.value) and refused.value.detail is None
    finally:
        bad.shutdown()
        bad.server_close()


class Scripted(Transport):
    """Answers every request with this status and body (secure aggregation's phases read such answers)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def request(self, method, target, *, headers, body, timeout):
        return BytesAnswer(200, [("Content-Type", "application/json")], self.body)


@pytest.mark.parametrize(
    "body, why",
    [(b'{"c": "a", "s": "b", "c": "x"}', "the key 'c' twice"), (b'{"shares": {"2": NaN}}', "NaN for the key '2'")],
)
def test_a_json_exchange_beyond_the_round_is_strict_too(body, why):
    remote = Remote("local://scripted", transport=Scripted(body))
    with pytest.raises(RemoteError, match=f"secure aggregation's keys answered {why}"):
        remote.post_json("/1/secagg/keys", b"{}", deadline=Deadline.within(5), what="secure aggregation's keys")


# -- worker processes' frames -------------------------------------------------------

WORKER = """
import struct, sys
from fedsync.transports.process._frames import read_frame
requests, answers = sys.stdin.buffer, sys.stdout.buffer
read_frame(requests, 1 << 20)  # request 0: never answered
read_frame(requests, 1 << 20)  # request 1
header = sys.argv[1].encode()
answers.write(struct.pack("!IQ", len(header), 6) + header + b"forged")
answers.flush()
read_frame(requests, 1 << 20)  # until the pool closes the pipe
"""


def scripted_worker(header: str) -> _Process:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return _Process([sys.executable, "-c", WORKER, header], env, max_body=1 << 20)


@pytest.mark.parametrize(
    "header, why",
    [
        ('{"id": true, "status": 200, "headers": []}', None),
        ('{"id": 1, "status": 200, "headers": [], "status": 500}', "a frame header has the key 'status' twice"),
        ('{"id": 1, "status": 200, "headers": [], "x": NaN}', "a frame header holds NaN, not a finite number"),
    ],
    ids=["id-true", "status-twice", "nan"],
)
@pytest.mark.slow  # waits out deadlines or kills processes: full suite only (fast tier < 90 s)
def test_a_worker_frame_with_a_bool_id_a_key_twice_or_a_constant_is_never_taken_as_an_answer(header, why):
    worker = scripted_worker(header)
    try:
        with pytest.raises(RemoteTimeout):
            worker.call("local://d", {"op": "info"}, b"", timeout=0.3)  # request 0
        if why is None:  # `true` is not the id 1: ignored, so request 1 waits out its timeout
            with pytest.raises(RemoteTimeout):
                worker.call("local://d", {"op": "info"}, b"", timeout=3)
        else:  # the pipe is unusable: its worker is stopped, and its request fails naming why
            with pytest.raises(RemoteError, match=f"sent a malformed frame \\({why}"):
                worker.call("local://d", {"op": "info"}, b"", timeout=10)
    finally:
        worker.kill("the test is over")
        worker.proc.wait(10)


def test_read_frame_refuses_a_key_twice_and_constants_naming_them():
    for text, why in [('{"id": 1, "id": 2}', "the key 'id' twice"), ('{"id": Infinity}', "holds Infinity")]:
        header = text.encode()
        with pytest.raises(FrameError, match=why):
            read_frame(io.BytesIO(struct.pack("!IQ", len(header), 0) + header), max_body=1)


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "100", None, 2.0**40])
def test_max_reply_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=r"max_reply must be a positive integer number of bytes, got .*; e\.g\. "):
        Remote("http://127.0.0.1:8000", max_reply=value)


@pytest.mark.parametrize("value", [-1, True, False, 1.0, "3", None])
def test_retries_must_be_a_whole_number_of_at_least_zero(value):
    with pytest.raises(ValueError, match=r"retries must be an integer >= 0, got .*; e\.g\. "):
        Remote("http://127.0.0.1:8000", retries=value)


def test_good_max_reply_and_retries_are_kept():
    remote = Remote("http://127.0.0.1:8000", max_reply=1, retries=0)
    assert remote.max_reply == 1 and type(remote.max_reply) is int
