"""A device's side of transfers that resume (docs/protocol.md, "Transfers that resume").

A result download resumes with ``Range: bytes=N-`` (RFC 9110): :func:`range_start` reads it and the
device serves its reply from byte ``N`` (:func:`fedsync.device._reply.from_offset`, no copy). A
submission resumes with the IETF resumable-upload draft's offsets, spelled on ``POST``: the bytes of
a broken body stay in a :class:`~fedsync.device._state.PartialUpload` (:func:`received`), ``HEAD
{rep}/submit`` answers how many arrived (``Upload-Offset``), and a ``POST`` with ``Upload-Offset: N``
and the first try's headers (:func:`check_resumable`) sends the rest.

Internal: the device side of :func:`fedsync.serve`; its names may change without notice.
"""

from __future__ import annotations

import io
import re
from typing import Any, cast

import numpy as np
from werkzeug.wrappers import Request

from ..errors import UnknownBase
from ..wire.http import CONFIG_HEADER, SPECS_HEADER, ApiError, ErrorCode
from ._state import Device, HeadedError, PartialUpload

__all__ = ["UPLOAD_OFFSET", "UPLOAD_LENGTH", "range_start", "upload_number", "sent", "check_resumable", "received"]

UPLOAD_OFFSET = "Upload-Offset"
"""Where a resumed submission's bytes start (the IETF resumable-upload draft's header); ``HEAD`` answers it."""

UPLOAD_LENGTH = "Upload-Length"
"""The whole payload's size in bytes, sent with a resumed submission and answered by ``HEAD``."""

_RANGE = re.compile(r"bytes=([0-9]{1,19})-", re.IGNORECASE)


def range_start(raw: str | None) -> int | None:
    """The ``N`` of a ``Range: bytes=N-`` header; ``None`` without one; else a ``416 bad_range`` ApiError."""
    if raw is None:
        return None
    match = _RANGE.fullmatch(raw.strip(" \t"))
    if match is None:
        raise ApiError(
            416,
            ErrorCode.BAD_RANGE,
            f"Range {raw[:60]!r} is not one open range of bytes; resume a download with 'Range: bytes=N-'",
        )
    return int(match.group(1))


def upload_number(request: Request, name: str) -> int:
    """A resumed submission's ``Upload-Offset`` or ``Upload-Length``: decimal digits; else ``400 bad_upload_offset``."""
    raw = request.headers.get(name)
    value = "" if raw is None else raw.strip(" \t")
    if not (0 < len(value) <= 19 and value.isascii() and value.isdigit()):
        shown = "none" if raw is None else repr(raw[:40])
        raise ApiError(
            400,
            ErrorCode.BAD_UPLOAD_OFFSET,
            f"{name} {shown} is not a number of bytes; a resumed submission sends Upload-Offset (from HEAD) "
            "and Upload-Length as decimal integers",
        )
    return int(value)


def sent(request: Request) -> tuple[str | None, ...]:
    """The headers a resumed submission must repeat exactly: specs, config, content type."""
    return (request.headers.get(SPECS_HEADER), request.headers.get(CONFIG_HEADER), request.headers.get("Content-Type"))


def check_resumable(partial: PartialUpload, request: Request, offset: int, total: int) -> None:
    """A resumption continues ``partial`` only with the first try's headers, length and the held offset."""
    if partial.reading:
        raise ApiError(409, ErrorCode.BUSY, "this submission's bytes are still arriving on another connection; "
                       "try again in a moment")  # fmt: skip
    if sent(request) != partial.sent or total != partial.length:
        raise ApiError(
            409,
            ErrorCode.UPLOAD_CHANGED,
            "a resumed submission must repeat the first try's X-Fedsync-Specs, X-Fedsync-Config, Content-Type "
            f"and Upload-Length ({partial.length}); send the whole payload again without Upload-Offset instead",
        )
    if offset != partial.received:
        raise HeadedError(
            409,
            ErrorCode.OFFSET_MISMATCH,
            f"Upload-Offset {offset} differs from the {partial.received} bytes held; send from byte {partial.received}",
            {UPLOAD_OFFSET: str(partial.received)},
        )


def received(request: Request, device: Device, partial: PartialUpload) -> Any:
    """Read the request's body into ``partial`` and check it; the payload once complete.

    On a break the bytes received stay with ``partial`` for a resumption: a lost connection goes up
    to the gateway (nobody reads an answer), a short body is answered ``400 truncated``.
    """
    raw = request.environ["wsgi.input"]
    stream = raw if hasattr(raw, "readinto") else cast("io.RawIOBase | io.BufferedIOBase", request.stream)
    view = memoryview(partial.buffer).cast("B")
    complete = False
    try:
        while partial.received < partial.length:
            n = stream.readinto(view[partial.received :])
            if not n:
                break
            partial.received += n
        complete = partial.received == partial.length
    finally:
        device.end_upload(partial, complete)
    if not complete:
        raise ApiError(
            400,
            ErrorCode.TRUNCATED,
            f"payload ended after {partial.received} of {partial.length} bytes; its bytes are kept: "
            "HEAD the same URL for Upload-Offset and send the rest",
        )
    buffer = partial.buffer
    encoding: Any = buffer.data if isinstance(buffer, np.ndarray) else buffer
    if request.mimetype == "text/plain":
        try:
            encoding = str(buffer, "utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, ErrorCode.MALFORMED_PAYLOAD, f"text/plain payload is not UTF-8: {exc}") from None
    try:
        device.fed.check(encoding, partial.repetition)
    except UnknownBase as exc:  # the coordinator sends the whole model instead
        raise ApiError(409, ErrorCode.UNKNOWN_BASE, str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, ErrorCode.MALFORMED_PAYLOAD, f"payload rejected: {exc}") from None
    return encoding
