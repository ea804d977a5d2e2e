"""Fixtures of the secure-aggregation tests: in-process devices over real HTTP, honest (``served``) or not
(``hostile``)."""

from __future__ import annotations

import json
import threading

import pytest

import fedsync
from fedsync.device import DeviceApp


@pytest.fixture
def served():
    servers = []

    def start(fed, **options):
        server = fedsync.serve(fed, port=0, block=False, **options)
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def hostile():
    """Start an in-process device over real HTTP whose secure-aggregation answers ``rewrite(phase, answer)`` alters."""
    from werkzeug.serving import make_server
    from werkzeug.test import Client
    from werkzeug.wrappers import Request, Response

    servers = []

    def start(fed, rewrite):
        inner = DeviceApp(fed)

        @Request.application
        def app(request):
            answer = Client(inner).open(
                request.full_path.rstrip("?"),
                method=request.method,
                headers=list(request.headers),
                data=request.get_data(),
            )
            phase = request.path.rsplit("/", 1)[-1] if "/secagg/" in request.path else None
            if phase is None or answer.status_code != 200:
                return Response(
                    answer.get_data(),
                    answer.status_code,
                    [(k, v) for k, v in answer.headers if k.lower() != "content-length"],
                )
            return Response(json.dumps(rewrite(phase, answer.get_json())), 200, mimetype="application/json")

        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
