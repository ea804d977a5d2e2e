"""The device side of the dial-out wire (docs/dial-out.md, issue #20): routes, and the checks of what a listener sends.

A listener is a peer like any other: its JSON is read strictly, each field of a job is checked
before use, and its numbers (Content-Length, Content-Range, Upload-Offset) are ASCII digits
only. A bad value raises :class:`BadJob` or :class:`ListenerError`, naming the value.

Internal: its names may change without notice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .._util.checks import is_int, is_number
from .._util.json import loads_strict, shown
from ..errors import FedSyncError
from ..wire.http import ErrorCode

__all__ = [
    "DIAL_PREFIX",
    "SESSION_HEADER",
    "STATUS_HEADER",
    "HEADERS_HEADER",
    "UPLOAD_LENGTH",
    "UPLOAD_OFFSET",
    "MAX_JSON",
    "MAX_POLL_WAIT",
    "NAME",
    "Job",
    "BadJob",
    "DialRefused",
    "StaleSession",
    "check_job",
    "ListenerError",
    "checked_name",
    "parse_json",
    "parse_job",
    "parse_registration",
    "digits",
    "check_content_range",
    "error_of",
]

DIAL_PREFIX = "/dial/1"
"""Every dial-out route starts here: ``/dial/1/{name}/register``, ``.../next``, ``.../jobs/{job}/body|answer``."""

SESSION_HEADER = "X-Fedsync-Session"
STATUS_HEADER = "X-Fedsync-Status"
HEADERS_HEADER = "X-Fedsync-Headers"
UPLOAD_LENGTH = "Upload-Length"
UPLOAD_OFFSET = "Upload-Offset"

MAX_JSON = 1024 * 1024
"""The largest JSON answer (registration, job, error) read from a listener, in bytes: a job carries headers only."""

MAX_POLL_WAIT = 60.0
"""The longest ``next`` long-poll the wire allows, in seconds."""

MAX_HEADERS = 100
MAX_TARGET = 8192
MAX_HEADER_BYTES = 256 * 1024

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")  # an RFC 9110 token without "_" (gateway/server.py)
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")
_METHODS = ("GET", "HEAD", "POST")


class DialRefused(FedSyncError, PermissionError):
    """The listener refused this device (401 a missing or wrong token, 403 a name not on its allow-list).

    Retrying is pointless: the message says what to change (the token, the name, or the coordinator's list).
    """


class StaleSession(Exception):
    """The listener answered 409 ``stale_session``: it restarted or this device registered again; register anew."""


class ListenerError(Exception):
    """The listener answered something that does not follow the dial-out wire (a bug or a stranger on the port)."""


class BadJob(ListenerError):
    """A job whose fields fail their checks; ``status`` and ``code`` are the error answer the device sends back."""

    def __init__(self, message: str, status: int = 400, code: str = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Job:
    """One request of the coordinator to run on this device's app.

    ``target``: the path and query (``/5/submit``, ``/5/result?wait=10``); ``length``: its body's bytes.
    """

    id: str
    method: str
    target: str
    headers: dict[str, str]
    length: int


def checked_name(name: Any) -> str:
    """The device's name as the wire allows it (1-64 of ``[A-Za-z0-9._-]``, not starting with ``.``/``-``).

    Raises:
        ValueError: anything else, with an example.
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"device name {shown(name)} is not allowed: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "not starting with '.' or '-', e.g. name='site-a' (the name on the coordinator's allow-list)"
        )
    return name


def parse_json(raw: bytes, what: str) -> Any:
    """``raw`` as strict JSON (no duplicate keys, no NaN), or a ListenerError naming ``what``."""

    def duplicate(key: str) -> Exception:
        return ListenerError(f"{what}: key {shown(key)} given twice")

    def constant(name: str) -> Exception:
        return ListenerError(f"{what}: {name} is not a JSON number")

    try:
        return loads_strict(raw, duplicate=duplicate, constant=constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ListenerError(f"{what} is not JSON ({exc}): {shown(raw[:80])}") from None
    except RecursionError:
        raise ListenerError(f"{what} nests too deeply") from None


def parse_registration(raw: bytes) -> tuple[str, float | None]:
    """The session id and the suggested long-poll wait (seconds, or None) of a ``register`` answer."""
    answer = parse_json(raw, "the registration's answer")
    if not isinstance(answer, dict):
        raise ListenerError(f"the registration's answer is not a JSON object: {shown(answer)}")
    session = answer.get("session")
    if not isinstance(session, str) or not _HEX32.fullmatch(session):
        raise ListenerError(f"the registration's session {shown(session)} is not 32 hex characters")
    wait = answer.get("wait")
    if wait is not None and (not is_number(wait) or not 0 < wait < 1e6):
        raise ListenerError(f"the registration's wait {shown(wait)} is not a number of seconds > 0")
    return session, None if wait is None else float(wait)


def parse_job(raw: bytes) -> Job:
    """A job from a ``next`` answer, its fields not checked yet (:func:`check_job` does, so a bad one can be answered).

    Raises:
        ListenerError: not a JSON object, or no usable job id (such a job cannot be answered).
    """
    answer = parse_json(raw, "the job")
    if not isinstance(answer, dict):
        raise ListenerError(f"the job is not a JSON object: {shown(answer)}")
    job_id = answer.get("job")
    if not isinstance(job_id, str) or not _HEX32.fullmatch(job_id):
        raise ListenerError(f"the job's id {shown(job_id)} is not 32 hex characters")
    method, target, headers, length = (answer.get(k) for k in ("method", "target", "headers", "length"))
    return Job(job_id, method, target, headers, length)  # type: ignore[arg-type]  # checked by check_job next


def check_job(job: Job, max_length: int) -> Job:
    """``job`` if its method, target, headers and length pass their checks.

    Raises:
        BadJob: the first field that fails, with the status to answer (400, or 413 for a length above
            ``max_length``).
    """
    if job.method not in _METHODS:
        raise BadJob(f"job method {shown(job.method)} is not one of GET, HEAD, POST")
    target = job.target
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        raise BadJob(f"job target {shown(target)} is not a path starting with '/', e.g. '/5/submit'")
    if len(target) > MAX_TARGET or not all("!" <= c <= "~" for c in target):
        raise BadJob(f"job target {shown(target)} is longer than {MAX_TARGET} or not printable ASCII without spaces")
    headers = job.headers
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise BadJob(f"job headers {shown(headers)} are not a JSON object of at most {MAX_HEADERS} names")
    size = 0
    for name, value in headers.items():
        if not isinstance(value, str) or not _HEADER_NAME.fullmatch(name):
            raise BadJob(f"job header {shown(name)}: {shown(value)} is not a token name with a string value")
        if any(not (" " <= c <= "~" or "\x80" <= c <= "\xff" or c == "\t") for c in value):
            raise BadJob(f"job header {shown(name)} has a control or non-latin-1 character")
        size += len(name) + len(value)
    if size > MAX_HEADER_BYTES:
        raise BadJob(f"job headers total {size} characters, above {MAX_HEADER_BYTES}")
    length = job.length
    if not is_int(length) or length < 0:
        raise BadJob(f"job length {shown(length)} is not a number of bytes >= 0")
    if length > max_length:
        raise BadJob(
            f"job body of {length} bytes exceeds this device's limit of {max_length}; "
            "start the device with a larger max_content_length",
            413,
            ErrorCode.TOO_LARGE,
        )
    if length and job.method != "POST":
        raise BadJob(f"a {job.method} job carries no body, got length {length}")
    return job


def digits(value: str | None, what: str, limit: int) -> int:
    """A header's value as a number in ``[0, limit]``: ASCII digits only (no sign, space or ``_``).

    Raises:
        ListenerError: missing, not digits, or above ``limit``.
    """
    if value is None or not (0 < len(value) <= 19 and value.isascii() and value.isdigit()) or int(value) > limit:
        raise ListenerError(f"{what} {shown(value)} is not a number of bytes in [0, {limit}]")
    return int(value)


def check_content_range(value: str | None, start: int, length: int) -> None:
    """A 206 answer's Content-Range must be exactly ``bytes start-(length-1)/length``.

    Raises:
        ListenerError: anything else (a listener that sends other bytes than those asked for).
    """
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None or tuple(map(int, match.groups())) != (start, length - 1, length):
        raise ListenerError(f"Content-Range {shown(value)} is not 'bytes {start}-{length - 1}/{length}'")


def error_of(raw: bytes) -> tuple[str, str]:
    """The ``(error, message)`` of a listener's JSON error answer; ``("", text)`` when it is not one."""
    try:
        answer = parse_json(raw, "the error")
    except ListenerError:
        return "", shown(raw[:200].decode("utf-8", "replace"), 200, quote=False)
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        message = answer.get("message")
        return answer["error"], shown(message if isinstance(message, str) else "", 300, quote=False)
    return "", shown(answer, 200)
