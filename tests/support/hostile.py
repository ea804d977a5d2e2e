"""A misbehaving device for tests: a raw-socket HTTP server that behaves like a real one except where told.

Each request is parsed by hand and answered by a real fedsync device app (run
in-process through ``werkzeug.test.Client``) unless the scenario answers it
itself: huge bodies, drip-fed replies, bad ``/info`` values, bad evaluation
answers, refusals with a crafted JSON body, replies with crafted metadata, echoed
credentials. Started as a subprocess by ``tests/support/run_hostile.py``.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from typing import Any, Callable

import numpy as np
from werkzeug.test import Client

from fedsync import FedArrays
from fedsync.device import DeviceApp
from fedsync.wire import codec
from tests.support.seed_fedfloat import FedFloat

PIECE = 1 << 20


def base_data(kind: str, value: float, samples: int) -> Any:
    if kind == "fedfloat":
        return FedFloat(value)

    def train(model):
        for a in model.values():
            a[...] = value
        return samples, {"loss": value}

    data = FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}, train)
    data.evaluate_fn = lambda model: (samples, {"accuracy": 0.5})
    return data


class Answer:
    """What the hostile server sends: a status, headers and a body, or a writer of its own."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"", write: Callable[[socket.socket], None] | None = None):
        self.status, self.headers, self.body, self.write = status, headers, body, write


class HostileDevice:
    """Answers each request as ``scenario`` says, else as a real device would."""

    def __init__(self, scenario: str, options: dict[str, Any]) -> None:
        self.scenario, self.options = scenario, options
        data = base_data(options.get("kind", "arrays"), float(options.get("value", 1.0)), int(options.get("samples", 10)))
        self.app = DeviceApp(data)

    def real(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        response = Client(self.app).open(target, method=method, headers=headers, data=body)
        data = response.get_data()
        kept = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "connection")}
        return Answer(response.status_code, kept, data)

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path = target.split("?", 1)[0]
        o, s = self.options, self.scenario
        if s == "info" and path == "/info":
            real = json.loads(self.real(method, target, headers, body).body)
            text = json.dumps({**real, "repetition": "__REP__"}).replace('"__REP__"', o["repetition"])
            return Answer(200, {"Content-Type": "application/json"}, text.encode())
        if s == "huge_info" and path == "/info":
            return huge(200, "application/json", o.get("size", 256 * PIECE))
        if s == "huge_error" and path.endswith("/result") and method == "GET":
            return huge(500, "application/json", o.get("size", 256 * PIECE))
        if s == "huge_eval" and path.endswith("/evaluate"):
            return huge(200, "application/json", o.get("size", 256 * PIECE))
        if s == "eval" and path.endswith("/evaluate"):
            return Answer(200, {"Content-Type": "application/json"}, o["answer"].encode())
        if s == "echo" and path.endswith("/submit"):
            message = json.dumps({"error": "http_error", "message": f"refused: {headers.get('Authorization')!s}"})
            return Answer(500, {"Content-Type": "application/json"}, message.encode())
        if s == "info_body" and path == "/info":  # /info answers exactly this text ("__TOKEN__": the token sent)
            token = headers.get("Authorization", "").partition(" ")[2]
            return Answer(200, {"Content-Type": "application/json"}, o["body"].replace("__TOKEN__", token).encode())
        if s == "many_headers" and path == "/info":  # more header lines than any HTTP client reads
            return Answer(200, {f"X-Header-{i}": "v" for i in range(150)}, b"{}")
        if s == "echo_token":  # the token it was sent, bare, in a value the coordinator quotes
            token = headers.get("Authorization", "").partition(" ")[2]
            if o["where"] == "info" and path == "/info":
                real = json.loads(self.real(method, target, headers, body).body)
                return Answer(200, {"Content-Type": "application/json"}, json.dumps({**real, "repetition": token}).encode())
            if path.endswith("/result") and method == "GET":
                real = self.real(method, target, headers, body)
                if real.status == 200 and o["where"] == "header":
                    return Answer(200, {**real.headers, "X-Fedsync-Repetition": token}, real.body)
                if real.status == 200 and o["where"] == "array":
                    arrays = {token: np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
                    return Answer(200, real.headers, codec.encode(arrays, {"fedsync.samples": "3"}))
                return real
        if s == "huge_text" and path.endswith("/result") and method == "GET":
            real = self.real(method, target, headers, body)
            if real.status != 200:
                return real
            size = o.get("size", 64 * PIECE)
            return Answer(200, {**real.headers, "Content-Length": str(size)}, write=lambda sock: send_text(sock, size))
        if s == "text" and path.endswith("/result") and method == "GET":
            real = self.real(method, target, headers, body)
            text = bytes.fromhex(o["hex"]) if "hex" in o else o["text"].encode()  # "hex": bytes that need not be UTF-8
            return Answer(200, {**real.headers, "Content-Type": "text/plain; charset=utf-8"}, text) if real.status == 200 else real
        if s == "header" and path.endswith("/result") and method == "GET":
            real = self.real(method, target, headers, body)
            if real.status == 200:
                real.headers.update(o["headers"])
            return real
        if s == "refuse" and path.endswith("/submit"):  # refuses the submission with this status and JSON text
            return Answer(int(o["status"]), {"Content-Type": "application/json"}, o["body"].encode())
        if s == "reply" and path.endswith("/result") and method == "GET":  # its real reply with metadata overridden
            real = self.real(method, target, headers, body)
            if real.status != 200:
                return real
            arrays, metadata = codec.decode(real.body)
            return Answer(200, real.headers, codec.encode(dict(arrays), {**metadata, **o["metadata"]}))
        if s == "drip" and path.endswith("/result") and method == "GET":
            real = self.real(method, target, headers, body)
            if real.status != 200:
                return real
            every = float(o.get("every", 2.0))
            head = len(real.body) // 2 if o.get("half_at_once") else 0  # then a byte every `every` s: a trickle
            return Answer(200, {**real.headers, "Content-Length": str(len(real.body))}, write=lambda sock: drip(sock, real.body, every, head))
        return self.real(method, target, headers, body)


def huge(status: int, mimetype: str, size: int) -> Answer:
    """``size`` bytes of JSON whitespace, announced with their Content-Length and streamed."""
    return Answer(status, {"Content-Type": mimetype, "Content-Length": str(size)}, write=lambda sock: send_blank(sock, size))


def send_blank(sock: socket.socket, size: int) -> None:
    piece = b" " * PIECE
    sent = 0
    while sent < size:
        sock.sendall(piece[: min(PIECE, size - sent)])
        sent += PIECE


def send_text(sock: socket.socket, size: int) -> None:
    """A FedFloat text reply of ``size`` bytes: ``1.0`` then spaces (``float`` ignores them)."""
    sock.sendall(b"1.0")
    send_blank(sock, size - 3)


def drip(sock: socket.socket, body: bytes, every: float, head: int = 0) -> None:
    sock.sendall(body[:head])
    for index in range(head, len(body)):
        sock.sendall(body[index : index + 1])
        time.sleep(every)


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        sock: socket.socket = self.request
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline(65536)
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (header := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip()] = value.strip()
                body = reader.read(int(headers.get("Content-Length", "0") or 0))
                answer = self.server.device.answer(method, target, headers, body)
                length = answer.headers.get("Content-Length", str(len(answer.body)))
                head = [f"HTTP/1.1 {answer.status} X"] + [f"{k}: {v}" for k, v in answer.headers.items() if k != "Content-Length"]
                head.append(f"Content-Length: {length}")
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                if method == "HEAD":
                    continue
                if answer.write is not None:
                    answer.write(sock)
                else:
                    sock.sendall(answer.body)
        except (OSError, ValueError):
            return  # the coordinator hung up: what a hostile device expects


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    device: HostileDevice


def serve(scenario: str, options: dict[str, Any]) -> _Server:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.device = HostileDevice(scenario, options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
