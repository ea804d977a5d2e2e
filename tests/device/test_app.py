"""The device's protocol: every bad request gets the right status and changes nothing."""

import errno
import http.client
import json
import socket
import threading

import numpy as np
import pytest
import requests
from werkzeug.test import Client

import fedsync
from fedsync import FedArrays
from fedsync.device import DeviceApp
from fedsync.wire import codec
from fedsync.wire.http import SPECS_HEADER
from tests.support.processes import tls_files
from tests.support.seed_fedfloat import FedFloat


def make_device(**kwargs):
    done = threading.Event()
    release = threading.Event()

    def train(model):
        model["w"] += 1.0
        done.set()
        assert release.wait(10), "test never released training"
        return 3

    data = FedArrays({"w": np.zeros((2, 3), np.float32)}, train)
    data.release = release
    data.done = done
    return data, Client(DeviceApp(data, **kwargs))


def submit(client, data, rep=1, body=None, specs=None, **kwargs):
    body = bytes(data.serialize(rep) if body is None else body)
    headers = {SPECS_HEADER: data.specs(rep) if specs is None else specs}
    return client.post(f"/{rep}/submit", data=body, headers=headers, content_type="application/octet-stream", **kwargs)


def assert_untouched(client, data):
    info = client.get("/info").json
    assert info["repetition"] == 0 and info["state"] == "idle"
    assert np.all(data.model["w"] == 0.0)


def test_info_is_the_handshake():
    data, client = make_device()
    info = client.get("/info").json
    assert info["protocol"] == 1
    assert info["fedsync"] == fedsync.__version__
    assert info["specs"] == data.specs(1)
    assert info["repetition"] == 0 and info["state"] == "idle"
    assert info["summary"] == {"weights": [{"name": "w", "shape": [2, 3], "dtype": "float32"}]}


def test_submit_trains_in_background_and_result_long_polls():
    data, client = make_device()
    response = submit(client, data)
    assert response.status_code == 202
    assert data.done.wait(10)
    assert client.get("/info").json["state"] == "training"  # /info answers while training
    assert client.get("/1/result?wait=0").status_code == 202
    data.release.set()
    result = client.get("/1/result?wait=10")
    assert result.status_code == 200
    assert result.headers[SPECS_HEADER] == data.specs(1)
    arrays, metadata = codec.decode(result.data)
    assert np.all(arrays["w"] == 1.0) and metadata["fedsync.samples"] == "3"


@pytest.mark.parametrize(
    "case, status, error, fragment",
    [
        ("garbage", 400, "malformed_payload", "header length 7306915995885594368 exceeds"),
        ("short_payload", 400, "malformed_payload", "<= 19 (the data section size), got [0, 24]"),
        ("wrong_shape", 400, "malformed_payload", "expected (2, 3) float32, payload has (3, 2) float32"),
        ("nan", 400, "malformed_payload", "array 'w' contains NaN or infinity"),
        ("text_for_arrays", 400, "malformed_payload", "expects a binary payload, got text"),
        ("missing_specs", 400, "missing_specs", "X-Fedsync-Specs header"),
        ("wrong_specs", 409, "specs_mismatch", "'arrays:sha256:0000000000000000' do not match"),
        ("stale_repetition", 409, "stale_repetition", "submit repetition 1 or later"),
        ("too_large", 413, "too_large", "10001 bytes exceeds this device's limit of 10000"),
    ],
)
def test_rejected_submission_changes_nothing(case, status, error, fragment):
    data, client = make_device(max_content_length=10_000)
    good = bytes(data.serialize(1))
    other = FedArrays({"w": np.zeros((3, 2), np.float32)})
    nan = FedArrays({"w": np.full((2, 3), np.nan, np.float32)})
    if case == "garbage":
        response = submit(client, data, body=b"\x00garbage" * 10)
    elif case == "short_payload":  # Content-Length matches the short body: the codec rejects it
        response = submit(client, data, body=bytes(good)[:-5])
    elif case == "wrong_shape":
        response = submit(client, data, body=other.serialize(1))
    elif case == "nan":
        response = submit(client, data, body=nan.serialize(1))
    elif case == "text_for_arrays":
        response = client.post("/1/submit", data="1.5", headers={SPECS_HEADER: data.specs(1)}, content_type="text/plain")
    elif case == "missing_specs":
        response = client.post("/1/submit", data=good, content_type="application/octet-stream")
    elif case == "wrong_specs":
        response = submit(client, data, specs="arrays:sha256:0000000000000000")
    elif case == "stale_repetition":
        response = submit(client, data, rep=0)
    elif case == "too_large":
        response = submit(client, data, body=b"x" * 10_001)
    assert response.status_code == status
    assert response.json["error"] == error
    assert fragment in response.json["message"], response.json["message"]
    assert_untouched(client, data)


def test_a_body_shorter_than_its_content_length_is_truncated(devices):
    """Content-Length 100, 50 bytes, then the client stops sending: 400 truncated, nothing changed."""
    device = devices("constant", 1.0, 3)
    specs = requests.get(f"{device.url}/info", timeout=10).json()["specs"]
    host, port = device.url.removeprefix("http://").rsplit(":", 1)
    head = f"POST /1/submit HTTP/1.1\r\nHost: x\r\n{SPECS_HEADER}: {specs}\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head.encode() + b"z" * 50)
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        answer = json.loads(response.read())
    assert response.status == 400 and answer["error"] == "truncated", answer
    assert "after 50 of 100 bytes" in answer["message"]
    info = requests.get(f"{device.url}/info", timeout=10).json()
    assert (info["repetition"], info["state"], info["rounds_served"]) == (0, "idle", 0)


def test_busy_device_refuses_and_keeps_its_work():
    data, client = make_device()
    assert submit(client, data, rep=1).status_code == 202
    assert data.done.wait(10)
    busy = submit(client, data, rep=2)
    assert busy.status_code == 409 and busy.json["error"] == "busy"
    assert "repetition 1" in busy.json["message"]
    data.release.set()
    assert client.get("/1/result?wait=10").status_code == 200
    assert client.get("/info").json["repetition"] == 1


def test_result_errors():
    data, client = make_device()
    assert client.get("/1/result").json["error"] == "unknown_repetition"
    assert client.get("/1/result").status_code == 404
    submit(client, data)
    assert client.get("/2/result").status_code == 404
    bad_wait = client.get("/1/result?wait=soon")
    assert bad_wait.status_code == 400 and "wait" in bad_wait.json["message"]
    assert client.get("/one/result").status_code == 404
    data.release.set()


@pytest.mark.parametrize("wait", ["-1", "inf", "-inf", "nan", "1e999", "soon", "", "1" * 41, "1_0", "1e3", "%2B5", "0x10"])
def test_a_wait_that_is_not_a_finite_number_of_seconds_is_refused(wait):
    data, client = make_device()
    assert submit(client, data).status_code == 202
    answer = client.get(f"/1/result?wait={wait}")
    assert answer.status_code == 400 and answer.json["error"] == "bad_wait", (wait, answer.json)
    assert "?wait=10" in answer.json["message"]
    data.release.set()
    assert client.get("/1/result?wait=10").status_code == 200  # the job itself is untouched


def test_a_long_wait_is_capped_at_max_wait(monkeypatch):
    monkeypatch.setattr(fedsync.device.app, "MAX_WAIT", 0.2)
    data, client = make_device()
    assert submit(client, data).status_code == 202
    answers = []
    poll = threading.Thread(target=lambda: answers.append(client.get("/1/result?wait=61")), daemon=True)
    poll.start()
    poll.join(30)  # without the cap, the device would hold this poll for 61 s
    data.release.set()
    assert not poll.is_alive(), "a wait of 61 s was not capped at MAX_WAIT"
    assert answers[0].status_code == 202 and answers[0].json == {"repetition": 1, "state": "training"}


def evaluate(client, data, rep=1, body=None):
    body = bytes(data.serialize(rep) if body is None else body)
    return client.post(f"/{rep}/evaluate", data=body, headers={SPECS_HEADER: data.specs(rep)}, content_type="application/octet-stream")


def test_evaluate_while_training_is_busy_and_changes_nothing():
    data, client = make_device()
    data.evaluate_fn = lambda model: (1, {"seen": float(model["w"].sum())})
    assert submit(client, data).status_code == 202
    assert data.done.wait(10)  # training holds the model
    busy = evaluate(client, data)
    assert busy.status_code == 409 and busy.json["error"] == "busy", busy.json
    assert "training repetition 1" in busy.json["message"]
    data.release.set()
    assert client.get("/1/result?wait=10").status_code == 200
    assert np.all(data.model["w"] == 1.0)  # what training left, untouched by the refused evaluation


def test_an_evaluate_callback_that_raises_answers_500_and_restores_the_model():
    data, client = make_device()

    def broken(model):
        raise RuntimeError("the test set is missing")

    data.evaluate_fn = broken
    sent = FedArrays({"w": np.full((2, 3), 7.0, np.float32)})
    answer = evaluate(client, data, body=sent.serialize(1))
    assert answer.status_code == 500 and answer.json["error"] == "evaluation_failed", answer.json
    assert answer.json["message"] == "RuntimeError: the test set is missing"
    assert_untouched(client, data)  # its own zeros back, not the 7s it was asked to measure


def test_a_rejected_evaluate_payload_changes_nothing():
    data, client = make_device()
    seen = []
    data.evaluate_fn = lambda model: seen.append(1) or 1
    nan = FedArrays({"w": np.full((2, 3), np.nan, np.float32)})
    answer = evaluate(client, data, body=nan.serialize(1))
    assert answer.status_code == 400 and answer.json["error"] == "malformed_payload", answer.json
    assert "contains NaN or infinity" in answer.json["message"]
    assert seen == [] and np.all(data.model["w"] == 0.0)


def test_unknown_routes_and_methods_answer_json():
    _, client = make_device()
    missing = client.get("/nothing")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong = client.get("/1/submit")
    assert wrong.status_code == 405 and wrong.json["error"] == "method_not_allowed"
    assert "'GET' is not allowed on '/1/submit'; use HEAD or POST" in wrong.json["message"]


def test_token_is_required_when_set():
    data, client = make_device(token="s3cret")
    assert client.get("/info").status_code == 401
    assert client.get("/info").json["error"] == "unauthorized"
    assert client.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert submit(client, data).status_code == 401
    assert np.all(data.model["w"] == 0.0)


def test_text_payload_must_be_utf8():
    client = Client(DeviceApp(FedFloat(1.5)))
    response = client.post("/2/submit", data=b"\xff\xfe", headers={SPECS_HEADER: "Float"}, content_type="text/plain")
    assert response.status_code == 400 and "UTF-8" in response.json["message"]
    assert client.get("/info").json["repetition"] == 0


def test_several_fed_data_under_named_bases():
    app = DeviceApp(FedFloat(1.0))
    assert app.devices.keys() == {""}
    server = fedsync.serve({"model": FedArrays([np.zeros(2)]), "threshold": FedFloat(0.5)}, port=0, block=False)
    with server:
        assert requests.get(f"{server.url}/threshold/info", timeout=5).json()["specs"] == "Float"
        assert requests.get(f"{server.url}/model/info", timeout=5).json()["type"] == "FedArrays"
        assert requests.get(f"{server.url}/info", timeout=5).json()["bases"] == ["model", "threshold"]


def test_garbage_over_real_http_is_rejected():
    data = FedArrays({"w": np.zeros(3, np.float32)})
    with fedsync.serve(data, port=0, block=False) as server:
        response = requests.post(
            f"{server.url}/1/submit", data=b"\x10" * 64, headers={SPECS_HEADER: data.specs(1)}, timeout=5
        )
        assert response.status_code == 400
        assert response.json()["error"] == "malformed_payload"
        assert requests.get(f"{server.url}/info", timeout=5).json()["repetition"] == 0


def test_tls_and_token_end_to_end(tmp_path):
    cert, key, ca = tls_files(tmp_path)
    with fedsync.serve(FedFloat(3.0), port=0, block=False, token="s3cret", ssl_context=(cert, key)) as server:
        assert server.url.startswith("https://")
        with pytest.raises(fedsync.errors.RemoteError, match="unauthorized"):
            fedsync.Remote(server.url, verify=ca).info()
        with fedsync.Federated(data=FedFloat(0.0), remotes=[fedsync.Remote(server.url, token="s3cret", verify=ca)]) as alg:
            alg.round()
        assert alg.data.value == 3.0


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_array_replies_written_straight_to_the_socket_arrive_intact(tmp_path, tls):
    # Several frames, each larger than a TLS record and a socket buffer.
    shapes = {"a": (3, 700_001), "b": (5,), "c": (1_000_003,)}
    rng = np.random.default_rng(7)
    trained = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}

    def train(model):
        for name, a in model.items():
            a[...] = trained[name]
        return 1

    device = FedArrays({name: np.zeros(shape, np.float32) for name, shape in shapes.items()}, train)
    cert, key, ca = tls_files(tmp_path) if tls else (None, None, None)
    ssl_context = (cert, key) if tls else None
    with fedsync.serve(device, port=0, block=False, ssl_context=ssl_context) as server:
        coordinator = FedArrays({name: np.zeros(shape, np.float32) for name, shape in shapes.items()})
        remote = fedsync.Remote(server.url, verify=ca if tls else True)
        with fedsync.Federated(data=coordinator, remotes=[remote]) as alg:
            alg.round()
    for name in shapes:
        np.testing.assert_array_equal(coordinator.model[name], trained[name])


def test_port_in_use_raises_instead_of_exiting():
    with fedsync.serve(FedFloat(1.0), port=0, block=False) as first:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}.*port=0") as caught:
            fedsync.serve(FedFloat(1.0), port=first.port, block=False)
    assert caught.value.errno == errno.EADDRINUSE


def test_a_readiness_check_on_failed_training_reports_the_devices_own_error():
    """HEAD /result answers 500 without a body: Remote.ready asks again with GET for the device's message."""
    from fedsync import Remote
    from fedsync.errors import TrainingFailed

    def train(model):
        raise RuntimeError("out of data on this device")

    data = FedArrays({"w": np.zeros(2, np.float32)}, train)
    with fedsync.serve(data, port=0, block=False) as server, Remote(server.url) as remote:
        remote.submit(1, bytes(data.serialize(1)), data.specs(1))
        with pytest.raises(TrainingFailed, match="out of data on this device") as caught:
            remote.ready(1, 10)
    assert caught.value.url == server.url


@pytest.mark.parametrize("token", [None, "s3cret-token"])
def test_serving_beyond_loopback_without_a_token_and_tls_warns(token, caplog):
    """docs/security.md: bind to another interface only with TLS and a token; serve says so when it is not.

    198.51.100.1 (TEST-NET-2) is no interface here: the warning comes first, then listening fails,
    so no test server ever listens beyond 127.0.0.1.
    """
    with caplog.at_level("WARNING", logger="fedsync.server"), pytest.raises(OSError):
        fedsync.serve(FedFloat(1.0), host="198.51.100.1", port=0, block=False, token=token)
    messages = [r.getMessage() for r in caplog.records if r.name == "fedsync.server"]
    assert len(messages) == 1 and messages[0].startswith("serving on 198.51.100.1 without " + ("a token and TLS" if token is None else "TLS")), messages


def test_serving_on_loopback_does_not_warn(caplog):
    with caplog.at_level("WARNING", logger="fedsync.server"):
        fedsync.serve(FedFloat(1.0), host="127.0.0.1", port=0, block=False).close()
    assert [r.getMessage() for r in caplog.records if r.name == "fedsync.server"] == []
