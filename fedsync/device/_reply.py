"""A reply's body, served from the memory ``serialize`` returned, without copying it.

The device's state (:mod:`fedsync.device._state`) decides *whether* a result may be read and
counts the downloads reading live model memory; this module turns a result into the WSGI body
that reads it: ``str``/``bytes`` as they are, a :class:`~fedsync.wire.codec.Payload` frame by
frame, written straight to the connection's socket when the gateway hands it over
(:data:`fedsync.gateway.server.SOCKET_KEY`), else in 1 MiB copies. ``release`` (the end of a
download's count) runs once, as soon as the live memory was read, however the reply ends.

Internal: the device side of :func:`fedsync.serve`; its names may change without notice.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..protocol import Encoding
from ..wire.codec import Payload

__all__ = ["Download", "download", "once", "owned_copy", "response_body", "reply_length", "from_offset"]

CHUNK = 1 << 20
"""Bytes of each copy a reply is sent in when the connection's socket is not at hand."""


def download(
    encoding: Encoding, sock: socket.socket | None, release: Callable[[], None] | None, offset: int = 0
) -> tuple[Download, str, int]:
    """The WSGI body of a result from byte ``offset`` on, its mimetype and its whole length in bytes.

    ``release`` runs once when the body no longer reads ``encoding``'s memory (or at once,
    if building the body fails). ``offset`` (a resumed download's ``Range: bytes=N-``) must be
    below the length: the caller checks it with :func:`reply_length` first.

    Raises:
        TypeError: ``encoding`` is not an :data:`~fedsync.protocol.Encoding`.
    """
    try:
        body, mimetype, length = response_body(encoding, sock, release, offset)
    except BaseException:
        if release is not None:
            release()
        raise
    return Download(body, release), mimetype, length


class Download:
    """A result's body as a WSGI iterable; ``release`` runs once when it ends, however it ends.

    The server calls ``close`` after the last piece or when the client went
    away (PEP 3333); ``__del__`` covers servers that forget.
    """

    def __init__(self, body: bytes | Iterable[bytes], release: Callable[[], None] | None) -> None:
        self._body = body
        self._pieces: Iterator[bytes] | None = None
        self._release = release

    def __iter__(self) -> Download:
        return self

    def __next__(self) -> bytes:
        pieces = self._pieces
        if pieces is None:
            body = self._body
            pieces = self._pieces = iter([body] if isinstance(body, (bytes, bytearray)) else body)
        try:
            return next(pieces)
        except StopIteration:
            self.close()  # the last byte left this process's model memory
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        pieces, self._pieces = self._pieces, None
        self._body = b""
        try:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        finally:
            if release is not None:
                release()

    def __del__(self) -> None:
        self.close()


def once(function: Callable[[], None]) -> Callable[[], None]:
    """``function``, run at most once however often the result is called (from any thread)."""
    lock = threading.Lock()
    pending = [function]

    def run() -> None:
        with lock:
            todo = pending.pop() if pending else None
        if todo is not None:
            todo()

    return run


def owned_copy(result: Encoding) -> Encoding:
    """A copy of ``result`` that shares no memory with the model."""
    if isinstance(result, (str, bytes)):
        return result
    if isinstance(result, Payload):
        buffer = np.empty(len(result), np.uint8)
        frames: list[memoryview | bytes] = []
        offset = 0
        for frame in result.frames:
            view = memoryview(frame).cast("B")
            buffer[offset : offset + len(view)] = np.frombuffer(view, np.uint8)
            frames.append(buffer.data[offset : offset + len(view)])
            offset += len(view)
        return Payload(frames)
    return bytes(memoryview(result).cast("B"))


def reply_length(encoding: Encoding) -> int:
    """The size in bytes of the reply ``encoding`` is served as (a ``str`` as UTF-8)."""
    if isinstance(encoding, str):
        return len(encoding.encode("utf-8"))
    if isinstance(encoding, Payload):
        return len(encoding)
    return memoryview(encoding).nbytes


def from_offset(payload: Payload, offset: int) -> Payload:
    """``payload`` without its first ``offset`` bytes: views of its frames, nothing copied."""
    frames: list[memoryview | bytes] = []
    for frame in payload:
        view = memoryview(frame).cast("B")
        if offset >= len(view):
            offset -= len(view)
            continue
        frames.append(view[offset:])
        offset = 0
    return Payload(frames)


def response_body(
    encoding: Encoding,
    sock: socket.socket | None = None,
    before_last: Callable[[], None] | None = None,
    offset: int = 0,
) -> tuple[bytes | Iterator[bytes], str, int]:
    """The response body from byte ``offset`` on, its mimetype and the whole reply's length, without copying it.

    ``sock``: the connection's socket, which fedsync's server puts in the
    environ (:data:`fedsync.gateway.server.SOCKET_KEY`); a :class:`Payload` is then
    written to it directly (see :func:`frames_to`). ``offset``: where a resumed download
    starts (``Range: bytes=N-``); the body then holds the whole length minus ``offset`` bytes.

    Raises:
        TypeError: ``encoding`` is not a ``str``, bytes-like or a :class:`Payload`.
    """
    if isinstance(encoding, str):
        data = encoding.encode("utf-8")
        return data[offset:], "text/plain", len(data)  # text replies are small: the slice's copy is cheap
    if isinstance(encoding, bytes) and not offset:
        return encoding, "application/octet-stream", len(encoding)
    if isinstance(encoding, (bytes, bytearray, memoryview)):
        encoding = Payload([memoryview(encoding).cast("B")])
    if isinstance(encoding, Payload):
        part = from_offset(encoding, offset) if offset else encoding
        # WSGI servers write bytes only; small chunks cost less than joining the whole
        # payload into one fresh model-sized buffer (page faults, measured).
        body = frames_to(sock, part, before_last) if sock is not None else chunks(part, before_last)
        return body, "application/octet-stream", len(encoding)
    raise TypeError(
        f"serialize() must return str or bytes, got {type(encoding).__name__}; "
        "e.g. return str(self.value) or codec.encode(arrays)"
    )


TAIL = 1 << 16
"""Bytes at the end of a reply sent from a copy, after the reply stops reading live memory."""


def frames_to(sock: socket.socket, payload: Payload, before_last: Callable[[], None] | None = None) -> Iterator[bytes]:
    """Write a payload's frames to the connection itself, without copying them.

    WSGI servers write only ``bytes``, so :func:`chunks` copies each piece
    of a model into one (about 20% of a device's CPU per round, measured with
    perf). fedsync's server (:mod:`fedsync.gateway.server`) sends the status line and
    headers (Content-Length included) on the first ``write``, even of ``b""``,
    on its unbuffered connection; the frames then follow on the same socket.

    ``before_last`` runs once the live memory was read, before the last
    ``TAIL`` bytes (sent from a copy) leave: a client that has the whole reply
    and at once asks the device to write its model finds it released.
    """
    yield b""
    cut = len(payload) - TAIL
    offset = 0
    tail: list[bytes] = []
    for frame in payload:
        view = memoryview(frame).cast("B")
        head = max(0, min(len(view), cut - offset))
        if head:
            sock.sendall(view[:head])
        if head < len(view):
            tail.append(bytes(view[head:]))
        offset += len(view)
    if before_last is not None:
        before_last()
    for piece in tail:
        sock.sendall(piece)


def chunks(payload: Payload, before_last: Callable[[], None] | None = None) -> Iterator[bytes]:
    """The payload as 1 MiB ``bytes`` copies; ``before_last`` runs before the last one is handed over."""
    pending: bytes | None = None
    for frame in payload:
        view = memoryview(frame).cast("B")
        for start in range(0, len(view), CHUNK):
            if pending is not None:
                yield pending
            pending = bytes(view[start : start + CHUNK])
    if before_last is not None:
        before_last()
    if pending is not None:
        yield pending
