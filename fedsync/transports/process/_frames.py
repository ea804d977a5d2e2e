"""Length-prefixed frames over a pipe: a JSON header and raw bytes, no pickle.

A frame is ``!IQ`` (the header's length, the body's length), the header as
UTF-8 JSON (an object, strict: unique keys, no ``NaN``/``Infinity``) and the body. Both lengths are checked against the
reader's limits before anything is allocated, and a frame's buffer grows with the bytes that arrive (at most twice
what arrived, never what was only announced), so a broken or hostile peer costs at most those limits, and a frame
that announces 2 GiB and sends 10 bytes costs about a megabyte. Used between a simulation's coordinator and its
worker processes (:mod:`fedsync.transports.process.pool`, :mod:`fedsync.transports.process._worker`).

Internal: its names may change without notice.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO, Protocol

from ..._util.json import loads_strict, shown

__all__ = ["FrameError", "Readable", "frame_head", "read_frame", "write_frame", "MAX_HEADER"]

_PREFIX = struct.Struct("!IQ")
MAX_HEADER = 16 << 20
"""The longest header accepted, in bytes (a request's HTTP headers, specs included)."""


class Readable(Protocol):
    """What frames are read from: a binary stream that fills the caller's buffer (a pipe's
    ``io.BufferedReader``, an ``io.BytesIO``). ``typing.BinaryIO`` declares no ``readinto``."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class FrameError(ValueError):
    """A frame that breaks the format or a limit: the pipe is unusable from here on."""


def frame_head(header: dict[str, Any], body_length: int) -> bytes:
    """A frame's bytes before its body: the prefix and the JSON header."""
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _PREFIX.pack(len(encoded), body_length) + encoded


def write_frame(stream: BinaryIO, header: dict[str, Any], body: bytes | bytearray | memoryview = b"") -> None:
    """Write one frame and flush it (the caller holds the stream's write lock).

    Raises:
        OSError: the pipe is closed (the peer died).
    """
    stream.write(frame_head(header, len(body)))
    if len(body):
        stream.write(body)
    stream.flush()


def read_frame(
    stream: Readable, max_body: int, max_header: int = MAX_HEADER
) -> tuple[dict[str, Any], bytearray] | None:
    """The next frame as ``(header, body)``; ``None`` at a clean end of stream (before a frame).

    Raises:
        FrameError: a length above ``max_header``/``max_body``, a stream that ends
            inside a frame, or a header that is not a JSON object (or has a key twice,
            or ``NaN``/``Infinity``).
        OSError: reading the pipe failed.
    """
    prefix = _read(stream, _PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < _PREFIX.size:
        raise FrameError(f"the stream ended inside a frame's prefix ({len(prefix)} of {_PREFIX.size} bytes)")
    header_length, body_length = _PREFIX.unpack(prefix)
    if header_length > max_header:
        raise FrameError(f"a frame header of {header_length} bytes is above the limit of {max_header}")
    if body_length > max_body:
        raise FrameError(f"a frame body of {body_length} bytes is above the limit of {max_body}")
    raw = _read(stream, header_length)
    body = _read(stream, body_length)
    if len(raw) < header_length or len(body) < body_length:
        raise FrameError("the stream ended inside a frame")
    try:
        header = loads_strict(
            bytes(raw),
            duplicate=lambda key: FrameError(f"a frame header has the key {shown(key)} twice; keys must be unique"),
            constant=lambda name: FrameError(f"a frame header holds {name}, not a finite number"),
        )
    except FrameError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"a frame header is not JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise FrameError(f"a frame header must be a JSON object, got {type(header).__name__}")
    return header, body


FIRST_CHUNK = 1 << 20
"""The buffer first allocated for a frame's part, in bytes; it doubles as bytes arrive, up to the announced length."""


def _read(stream: Readable, n: int) -> bytearray:
    """Up to ``n`` bytes: fewer only at the end of the stream.

    The buffer grows with what arrives (doubling), so an announced length costs memory only once its bytes come.
    """
    buffer = bytearray(min(n, FIRST_CHUNK))
    got = 0
    while got < n:
        if got == len(buffer):
            buffer += bytes(min(n - got, len(buffer)))  # zero pages from calloc: cheap until written
        with memoryview(buffer) as view:
            count = stream.readinto(view[got:])
        if not count:
            break
        got += count
    if got < len(buffer):
        del buffer[got:]
    return buffer


MAX_KEPT = 1024
"""Most FedData states one device's frame may carry (a device serves one FedData, or a dict of them)."""


def pack_kept(kept: dict[str, bytes]) -> tuple[list[list[Any]], bytes]:
    """A device's kept states (base -> codec bytes) as a frame's ``"kept"`` entries ``[[base, length]]`` and body."""
    return [[base, len(data)] for base, data in kept.items()], b"".join(kept.values())


def unpack_kept(entries: Any, body: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """The states :func:`pack_kept` packed, checked: string bases, lengths that add up to the body's.

    The bytes themselves are checked where they are loaded (:func:`fedsync.data._state.restore_state`).

    Raises:
        FrameError: malformed entries, saying what was wrong.
    """
    if not isinstance(entries, list) or len(entries) > MAX_KEPT:
        raise FrameError(f"a frame's kept states are not a list of at most {MAX_KEPT} [base, length] pairs")
    kept: dict[str, bytes] = {}
    view, at = memoryview(body), 0
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and len(entry[0]) <= 256):
            raise FrameError(f"a kept state's entry {str(entry)[:80]!r} is not [base, length]")
        length = entry[1]
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= len(view) - at:
            raise FrameError(f"a kept state's length {str(length)[:40]} does not fit the frame's {len(view)} bytes")
        kept[entry[0]] = bytes(view[at : at + length])
        at += length
    if at != len(view):
        raise FrameError(f"a frame's kept states take {at} of its {len(view)} bytes")
    return kept
