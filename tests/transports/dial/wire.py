"""A device that dials in, written from docs/protocol.md ("Devices that dial out") with ``requests``.

The device-side dialer is another branch's; these tests drive the listener with this stand-in, which runs each
job through a real :class:`fedsync.device.DeviceApp` (a WSGI call in this process) and can misbehave on purpose:
cut its body download or its answer upload at half (then resume), or vanish mid-answer.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
from urllib.parse import urlsplit

import numpy as np
import requests
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder

from fedsync import FedArrays
from fedsync.device import DeviceApp
from fedsync.transports.local import call_app


def big(value: float, n: int = 1 << 20) -> FedArrays:
    """A 4 MiB model (``n`` float32) whose training sets every weight to ``value`` and reports 2 samples."""

    def train(model):
        model["w"][...] = value
        return 2, {"loss": value}

    return FedArrays({"w": np.zeros(n, np.float32)}, train)


class WireDevice:
    """Registers as ``name`` with ``token`` and answers jobs until :meth:`close`.

    ``cut``: ``"download"`` breaks the first body download of a submission at half and resumes it with
    ``Range``; ``"upload"`` breaks the first result upload at half and resumes it from HEAD's ``Upload-Offset``;
    ``"vanish"`` sends half of its first result and stops answering anything.
    """

    def __init__(self, url: str, name: str, token: str, data, cut: str = "") -> None:
        self.url, self.name, self.token, self.cut = url.rstrip("/"), name, token, cut
        self.app = DeviceApp(data)
        self.http = requests.Session()
        self.stopped = threading.Event()
        self.session = ""
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self.poller: threading.Thread | None = None

    def route(self, rest: str) -> str:
        return f"{self.url}/dial/1/{self.name}/{rest}"

    def headers(self, **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Fedsync-Session": self.session, **more}

    def register(self) -> requests.Response:
        info = json.loads(call_app(self.app, EnvironBuilder(path="/info").get_environ())[2])
        body = {"protocol": 1, "fedsync": "test", "bases": [""], "specs": {"": info["specs"]}}
        response = self.http.post(self.route("register"), json=body, headers=self.headers(), timeout=10)
        if response.status_code == 200:
            self.session = response.json()["session"]
        return response

    def start(self) -> WireDevice:
        response = self.register()
        assert response.status_code == 200, response.text
        self.poller = threading.Thread(target=self.poll, daemon=True)
        self.poller.start()
        return self

    def poll(self) -> None:
        for _ in range(100_000):  # bounded: a test ends long before
            if self.stopped.is_set():
                return
            try:
                response = self.http.get(self.route("next"), params={"wait": "0.25"}, headers=self.headers(), timeout=10)
            except requests.RequestException as exc:
                self.errors.append(f"next: {exc}")
                continue
            if response.status_code == 200 and not self.stopped.is_set():
                thread = threading.Thread(target=self.run, args=(response.json(),), daemon=True)
                self.threads.append(thread)
                thread.start()
            elif response.status_code not in (200, 204):
                self.errors.append(f"next answered {response.status_code}: {response.text}")
                return

    def run(self, job: dict) -> None:
        try:
            body = self.download(job)
            path, _, query = job["target"].partition("?")
            builder = EnvironBuilder(
                path=path, method=job["method"], headers=Headers(job["headers"]), query_string=query,
                input_stream=io.BytesIO(body), content_length=len(body),
            )  # fmt: skip
            status, headers, content = call_app(self.app, builder.get_environ())
            self.upload(job, status, dict(headers), content)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to see
            self.errors.append(f"job {job.get('target')}: {type(exc).__name__}: {exc}")

    def download(self, job: dict) -> bytes:
        if not job["length"]:
            return b""
        route = self.route(f"jobs/{job['job']}/body")
        if self.cut == "download" and job["target"].endswith("/submit"):
            self.cut = ""
            with self.http.get(route, headers=self.headers(), stream=True, timeout=10) as first:
                assert first.status_code == 200 and int(first.headers["Content-Length"]) == job["length"]
                half = first.raw.read(job["length"] // 2)
            rest = requests.get(route, headers=self.headers(Range=f"bytes={len(half)}-"), timeout=30)
            assert rest.status_code == 206, rest.text
            assert rest.headers["Content-Range"] == f"bytes {len(half)}-{job['length'] - 1}/{job['length']}"
            return half + rest.content
        response = self.http.get(route, headers=self.headers(), timeout=30)
        assert response.status_code == 200 and len(response.content) == job["length"], response.status_code
        return response.content

    def upload(self, job: dict, status: int, headers: dict[str, str], content: bytes) -> None:
        route = self.route(f"jobs/{job['job']}/answer")
        head = {"X-Fedsync-Status": str(status), "X-Fedsync-Headers": json.dumps(headers),
                "Upload-Length": str(len(content))}  # fmt: skip
        if self.cut in ("upload", "vanish") and len(content) > 1 << 20:
            vanish, self.cut = self.cut == "vanish", ""
            self.send_half(route, head, content)
            if vanish:
                self.stopped.set()
                return
            held = self.http.head(route, headers=self.headers(), timeout=10)
            offset = int(held.headers["Upload-Offset"]) if held.status_code == 204 else 0  # 404: none started
        else:
            offset = 0
        for _ in range(10):
            answer = self.http.post(route, data=content[offset:], headers=self.headers(**head, **{"Upload-Offset": str(offset)}),
                                    timeout=60)  # fmt: skip
            if answer.status_code == 409 and answer.json()["error"] == "offset_mismatch":
                offset = int(answer.headers["Upload-Offset"])
                continue
            assert answer.status_code == 204, answer.text
            return

    def send_half(self, route: str, head: dict[str, str], content: bytes) -> None:
        """Start the upload of ``content`` announcing all of it, send half, and hang up."""
        parts = urlsplit(route)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        connection.putrequest("POST", parts.path)
        for key, value in {**self.headers(**head), "Upload-Offset": "0", "Content-Length": str(len(content))}.items():
            connection.putheader(key, value)
        connection.endheaders()
        connection.send(content[: len(content) // 2])
        connection.close()

    def close(self) -> None:
        self.stopped.set()
        if self.poller is not None:
            self.poller.join(15)
        for thread in self.threads:
            thread.join(15)
        self.http.close()
