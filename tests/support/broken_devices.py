"""Devices that break docs/protocol.md in one known way each, for ``fedsync check``'s tests.

Each is a WSGI proxy in front of a real fedsync device (``serve(block=False)``), served for real by
werkzeug's threaded server, that changes one thing in what the device answers: the rest is the real
device, so the checker's failure can only come from that one change.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from fedsync import FedArrays, serve
from fedsync.wire import codec

Change = Callable[[Request, Response], Response]


def linear_model(evaluate: bool = True) -> FedArrays:
    """A float32 linear model that trains one step (12 samples, a loss) and evaluates."""
    model = {"w": np.zeros((3, 1), np.float32), "b": np.zeros(1, np.float32)}

    def train(m: dict) -> tuple[int, dict]:
        m["w"] += np.float32(0.125)
        return 12, {"loss": 0.5}

    return FedArrays(model, train, evaluate=(lambda m: (5, {"accuracy": 1.0})) if evaluate else None)


def js_specs(weights: list[dict]) -> str:
    """The specs the natural JavaScript guess gives: keys as listed, not sorted."""
    text = json.dumps(weights, separators=(",", ":"))
    return "arrays:sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def wrong_specs_rule(request: Request, response: Response) -> Response:
    """/info's specs by the unsorted-keys rule (the device itself is left to its own specs)."""
    if request.path.endswith("/info") and response.status_code == 200:
        info = json.loads(response.get_data())
        info["specs"] = js_specs(info["summary"]["weights"])
        return Response(json.dumps(info), 200, mimetype="application/json")
    return response


def no_sample_count(request: Request, response: Response) -> Response:
    """Replies without ``fedsync.samples`` in their metadata."""
    if request.path.endswith("/result") and request.method == "GET" and response.status_code == 200:
        arrays, metadata = codec.decode(response.get_data())
        metadata = {k: v for k, v in metadata.items() if k != "fedsync.samples"}
        return Response(
            codec.encode({k: np.array(a) for k, a in arrays.items()}, metadata),
            200,
            mimetype="application/octet-stream",
            headers={"X-Fedsync-Repetition": request.path.split("/")[1]},
        )
    return response


def html_errors(request: Request, response: Response) -> Response:
    """Every 4xx as an HTML page, its status kept."""
    if 400 <= response.status_code < 500:
        return Response(
            f"<html><body><h1>{response.status_code}</h1></body></html>", response.status_code, mimetype="text/html"
        )
    return response


def wrong_status(request: Request, response: Response) -> Response:
    """``specs_mismatch`` answered 400 instead of 409 (its JSON body kept)."""
    if response.status_code == 409 and b"specs_mismatch" in response.get_data():
        return Response(response.get_data(), 400, mimetype="application/json")
    return response


BROKEN: dict[str, Change] = {
    "wrong_specs_rule": wrong_specs_rule,
    "no_sample_count": no_sample_count,
    "html_errors": html_errors,
    "wrong_status": wrong_status,
}


class _Proxy:
    def __init__(self, target: str, change: Change) -> None:
        self.target, self.change = target, change
        self.session = requests.Session()
        self.session.trust_env = False

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        request = Request(environ)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        query = f"?{request.query_string.decode()}" if request.query_string else ""
        answer = self.session.request(
            request.method, self.target + request.path + query, data=request.get_data(), headers=headers, timeout=30
        )
        kept = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "keep-alive")
        }
        response = Response(answer.content, answer.status_code, headers=kept)
        return self.change(request, response)(environ, start_response)


@contextmanager
def broken_device(change: Change | None, token: str | None = None) -> Iterator[str]:
    """A real device (the linear model) behind a proxy applying ``change``; yields the proxy's URL.

    ``change=None`` yields the device's own URL. Both servers are stopped on exit.
    """
    device = serve(linear_model(), port=0, block=False, token=token)
    try:
        if change is None:
            yield device.url
            return
        server = make_server("127.0.0.1", 0, _Proxy(device.url, change), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
    finally:
        device.close()
