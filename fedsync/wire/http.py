"""The HTTP vocabulary of protocol v1, named once: headers, routes, wire limits and error codes.

Both sides speak these words: the device raises :class:`ApiError` with an :class:`ErrorCode`
and the gateway answers its own refusals with one; the coordinator matches the code it reads
back against the same enum. ``docs/protocol.md`` is the contract for other implementations,
and ``tests/wire/test_http.py`` holds it to this module: every code and header here is
documented there, and every code documented there exists here.

Every error answer is JSON ``{"error": code, "message": text}`` (:func:`json_response`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

__all__ = [
    "SPECS_HEADER",
    "REPETITION_HEADER",
    "CONFIG_HEADER",
    "DEADLINE_HEADER",
    "MAX_PAYLOAD",
    "MAX_WAIT",
    "SECAGG_PHASES",
    "Route",
    "ROUTES",
    "INDEX_ROUTES",
    "ErrorCode",
    "ApiError",
    "json_response",
]

# -- headers ----------------------------------------------------------------------------

SPECS_HEADER = "X-Fedsync-Specs"
"""HTTP header carrying the specs of a payload (submissions, evaluations, results)."""

REPETITION_HEADER = "X-Fedsync-Repetition"
"""HTTP header carrying the repetition a result belongs to."""

DEADLINE_HEADER = "X-Fedsync-Deadline"
"""HTTP header carrying the seconds left in the coordinator's round when it sent a submission or an evaluation.

Informational for a device; an aggregator ends its round below within it (docs/aggregators.md).
"""

CONFIG_HEADER = "X-Fedsync-Config"
"""HTTP header carrying a round's configuration (submissions and evaluations; :mod:`fedsync.wire.config`)."""

# -- limits ------------------------------------------------------------------------------

MAX_PAYLOAD = 2 * 1024**3
"""The default largest payload, in bytes: what a device accepts and a coordinator downloads (2 GiB)."""

MAX_WAIT = 60.0
"""The longest a single result long-poll is held open, in seconds (``?wait=`` above it is capped)."""

# -- routes ------------------------------------------------------------------------------

SECAGG_PHASES = ("keys", "shares", "inbox", "consistency", "unmask")
"""Secure aggregation's phases, in the order a round runs them (``{phase}`` of the ``secagg`` route)."""


@dataclass(frozen=True)
class Route:
    """One route of protocol v1.

    ``path`` is a template relative to a FedData's base (``""`` or ``/<name>``): ``{rep}`` is a
    repetition in ASCII digits, ``{phase}`` one of :data:`SECAGG_PHASES`. ``endpoint`` names the
    device's handler (``DeviceApp.on_<endpoint>``). A ``GET`` route also answers ``HEAD``.
    """

    endpoint: str
    method: str
    path: str


ROUTES = (
    Route("status", "GET", "/"),
    Route("info", "GET", "/info"),
    Route("submit", "POST", "/{rep}/submit"),
    Route("submit_offset", "HEAD", "/{rep}/submit"),
    Route("result", "GET", "/{rep}/result"),
    Route("evaluate", "POST", "/{rep}/evaluate"),
    Route("secagg", "POST", "/{rep}/secagg/{phase}"),
)
"""The routes under each base: the status page, the handshake, and a repetition's exchanges."""

INDEX_ROUTES = (
    Route("index", "GET", "/info"),
    Route("index_page", "GET", "/"),
)
"""The routes at the root of a device serving named bases only: the list of bases, as JSON and as a page."""

# -- error codes -------------------------------------------------------------------------


class ErrorCode(str, Enum):
    """The ``"error"`` of every JSON error answer (docs/protocol.md, "Error codes").

    str-valued: a member is its code wherever a string is (``json.dumps``, ``==``, f-strings),
    so answers stay byte-identical to the literals they replace.
    """

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)

    # The gateway (HTTP/1.1 framing), before any route runs.
    BAD_REQUEST = "bad_request"
    BAD_HOST = "bad_host"
    BAD_TARGET = "bad_target"
    URI_TOO_LONG = "uri_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TLS_REQUIRED = "tls_required"
    INTERNAL_ERROR = "internal_error"
    # Either the gateway or the device: a request's framing and size.
    LENGTH_REQUIRED = "length_required"
    BAD_CONTENT_LENGTH = "bad_content_length"
    TOO_LARGE = "too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # The device: routing and authorization.
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"
    # The device: a repetition's requests.
    BAD_REPETITION = "bad_repetition"
    STALE_REPETITION = "stale_repetition"
    UNKNOWN_REPETITION = "unknown_repetition"
    BUSY = "busy"
    MISSING_SPECS = "missing_specs"
    SPECS_MISMATCH = "specs_mismatch"
    BAD_CONFIG = "bad_config"
    BAD_WAIT = "bad_wait"
    TRUNCATED = "truncated"
    MALFORMED_PAYLOAD = "malformed_payload"
    UNKNOWN_BASE = "unknown_base"  # 409: a model sent as a delta from a view this device does not hold (#25)
    TRAINING_FAILED = "training_failed"
    EVALUATION_FAILED = "evaluation_failed"
    NOT_SUPPORTED = "not_supported"
    # The device: secure aggregation's phases.
    SECURE_AGGREGATION_REQUIRED = "secure_aggregation_required"
    SECAGG_MALFORMED = "secagg_malformed"
    SECAGG_BAD_KEYS = "secagg_bad_keys"
    SECAGG_BAD_SHARE = "secagg_bad_share"
    SECAGG_OUT_OF_ORDER = "secagg_out_of_order"
    SECAGG_TOO_FEW = "secagg_too_few"
    SECAGG_BOTH_SHARES = "secagg_both_shares"
    SECAGG_UNSIGNED_PEER = "secagg_unsigned_peer"
    SECAGG_BAD_CERTIFICATE = "secagg_bad_certificate"
    SECAGG_BAD_SIGNATURE = "secagg_bad_signature"
    SECAGG_INCONSISTENT = "secagg_inconsistent"
    SECAGG_UNSIGNED = "secagg_unsigned"
    # The dial-out listener (fedsync.transports.dial): devices that dial in to the coordinator.
    NOT_ALLOWED = "not_allowed"
    IDENTITY_MISMATCH = "identity_mismatch"
    STALE_SESSION = "stale_session"
    UNKNOWN_JOB = "unknown_job"
    # Transfers that resume (docs/protocol.md): the dial-out listener and the device both use these.
    BAD_RANGE = "bad_range"
    OFFSET_MISMATCH = "offset_mismatch"
    ANSWER_CHANGED = "answer_changed"
    BAD_REGISTRATION = "bad_registration"
    BAD_ANSWER = "bad_answer"
    REQUEST_TIMEOUT = "request_timeout"
    BAD_UPLOAD_OFFSET = "bad_upload_offset"
    # A tree of aggregators (docs/aggregators.md): the parent's deadline travels down.
    BAD_DEADLINE = "bad_deadline"
    UNKNOWN_UPLOAD = "unknown_upload"
    UPLOAD_CHANGED = "upload_changed"
    LISTENER_CLOSING = "listener_closing"


class ApiError(HTTPException):
    """An HTTP error answered as JSON ``{"error": error, "message": message}`` with status ``code``.

    Args:
        status: the HTTP status, 4xx or 5xx.
        error: the code a client matches on.
        message: what happened and what to do, for people.
    """

    code: int
    """The HTTP status (werkzeug's name for it)."""
    error: ErrorCode
    message: str

    def __init__(self, status: int, error: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = status
        self.error = error
        self.message = message

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        """The JSON answer of this error."""
        return json_response({"error": self.error, "message": self.message}, self.code)


def json_response(obj: Any, status: int = 200) -> Response:
    """``obj`` as a JSON response (``application/json``) with HTTP ``status``.

    Raises:
        TypeError: ``obj`` is not JSON-serializable.
    """
    return Response(json.dumps(obj), status=status, mimetype="application/json")
