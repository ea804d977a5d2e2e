"""The device's side of transfers that resume (docs/protocol.md, "Transfers that resume"), through its WSGI app.

Hostile resumptions (a Range or Upload-Offset that is malformed, negative or past the end, a resumed
submission whose headers differ) get a 4xx and change nothing: the held bytes stay, and an honest
resumption then completes with the exact payload.
"""

import io

import numpy as np
import pytest
from werkzeug.test import Client

from fedsync.data import FedArrays
from fedsync.device import DeviceApp

N = 1000


def make():
    def train(model):
        model["w"] += np.float32(1)
        return 3

    fed = FedArrays({"w": np.zeros(N, np.float32)}, train)
    return fed, Client(DeviceApp(fed))


def payload():
    sender = FedArrays({"w": np.arange(N, dtype=np.float32)}, lambda m: 0)
    return bytes(sender.serialize(1))


def headers(fed, **extra):
    return {"X-Fedsync-Specs": fed.specs(1), "Content-Type": "application/octet-stream", **extra}


def broken_submission(fed, client, body, received):
    """A first try whose body ends after ``received`` of its announced bytes (the connection broke)."""
    answer = client.post(
        "/1/submit",
        input_stream=io.BytesIO(body[:received]),
        headers=headers(fed),
        environ_overrides={"CONTENT_LENGTH": str(len(body))},
    )
    assert answer.status_code == 400 and answer.get_json()["error"] == "truncated"


def held(client):
    answer = client.head("/1/submit")
    return answer.status_code, answer.headers.get("Upload-Offset"), answer.headers.get("Upload-Length")


def resume(fed, client, body, offset, **extra):
    fields = {"Upload-Offset": str(offset), "Upload-Length": str(len(body)), **extra}
    return client.post("/1/submit", data=body[offset:], headers=headers(fed, **fields))


def test_a_broken_submission_is_held_and_its_rest_completes_it_exactly():
    fed, client = make()
    body = payload()
    assert held(client)[0] == 404
    broken_submission(fed, client, body, 300)
    assert held(client) == (204, "300", str(len(body)))
    answer = resume(fed, client, body, 300)
    assert answer.status_code == 202, answer.get_json()
    result = client.get("/1/result?wait=10")
    assert result.status_code == 200
    assert held(client)[0] == 404  # complete: nothing held any more
    values = np.frombuffer(result.data[-4 * N :], np.float32)
    assert np.array_equal(values, np.arange(N, dtype=np.float32) + 1)


HOSTILE = {
    "offset not a number": ({"Upload-Offset": "abc"}, 400, "bad_upload_offset"),
    "negative offset": ({"Upload-Offset": "-1"}, 400, "bad_upload_offset"),
    "offset past the end": ({"Upload-Offset": "999999"}, 400, "bad_upload_offset"),
    "offset that differs": ({"Upload-Offset": "100"}, 409, "offset_mismatch"),
    "length that differs": ({"Upload-Length": "5000"}, 400, "bad_upload_offset"),
    "no length": ({"Upload-Length": ""}, 400, "bad_upload_offset"),
    "other config": ({"X-Fedsync-Config": '{"lr": 1}'}, 409, "upload_changed"),
    "other content type": ({"Content-Type": "text/plain"}, 409, "upload_changed"),
    "other specs": ({"X-Fedsync-Specs": "fedarrays:other"}, 409, "specs_mismatch"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_resumption_gets_a_4xx_and_changes_nothing(name):
    fed, client = make()
    body = payload()
    broken_submission(fed, client, body, 300)
    change, status, code = HOSTILE[name]
    fields = {"Upload-Offset": "300", "Upload-Length": str(len(body)), **change}
    start = 100 if name == "offset that differs" else 300  # a consistent request from the wrong offset
    answer = client.post("/1/submit", data=body[start:], headers=headers(fed, **fields))
    assert (answer.status_code, answer.get_json()["error"]) == (status, code), answer.get_json()
    if code == "offset_mismatch":
        assert answer.headers["Upload-Offset"] == "300"
    assert held(client) == (204, "300", str(len(body)))  # the held bytes are untouched
    assert resume(fed, client, body, 300).status_code == 202


def test_a_resumption_without_a_held_submission_is_404_and_a_fresh_one_replaces_it():
    fed, client = make()
    body = payload()
    answer = resume(fed, client, body, 300)
    assert answer.status_code == 404 and answer.get_json()["error"] == "unknown_upload"
    broken_submission(fed, client, body, 300)
    broken_submission(fed, client, body, 120)  # a fresh first try replaces the held one
    assert held(client)[1] == "120"
    assert client.head("/2/submit").status_code == 404  # another repetition holds nothing


RANGES = {
    "suffix": "bytes=-5",
    "closed": "bytes=0-5",
    "two ranges": "bytes=1-,3-",
    "other unit": "items=1-",
    "negative": "bytes=-1-",
    "huge": "bytes=99999999999999999999-",
    "garbage": "bytes=abc-",
}


def finished():
    fed, client = make()
    assert client.post("/1/submit", data=payload(), headers=headers(fed)).status_code == 202
    whole = client.get("/1/result?wait=10")
    assert whole.status_code == 200
    return client, whole.data


def test_a_result_is_served_from_any_byte_with_206():
    client, whole = finished()
    for first in (0, 1, 700, len(whole) - 1):
        answer = client.get("/1/result", headers={"Range": f"bytes={first}-"})
        assert answer.status_code == 206
        assert answer.headers["Content-Range"] == f"bytes {first}-{len(whole) - 1}/{len(whole)}"
        assert answer.headers["X-Fedsync-Repetition"] == "1" and answer.headers["X-Fedsync-Specs"]
        assert answer.data == whole[first:]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_a_bad_range_is_416_and_changes_nothing(name):
    client, whole = finished()
    answer = client.get("/1/result", headers={"Range": RANGES[name]})
    assert answer.status_code == 416 and answer.get_json()["error"] == "bad_range"
    assert client.get("/1/result").data == whole


def test_a_range_past_the_end_is_416_with_the_length():
    client, whole = finished()
    answer = client.get("/1/result", headers={"Range": f"bytes={len(whole)}-"})
    assert answer.status_code == 416 and answer.headers["Content-Range"] == f"bytes */{len(whole)}"
    assert client.get("/1/result").data == whole
