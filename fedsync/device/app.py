"""The device side: a WSGI app (werkzeug routing) serving one or more FedData over HTTP.

:func:`fedsync.device.serving.serve` runs it on :class:`fedsync.gateway.server.KeepAliveServer`,
which keeps HTTP/1.1 connections open between a round's requests.

Routes (protocol v1, :data:`fedsync.wire.http.ROUTES`, see ``docs/protocol.md``), under each
FedData's base (``""`` for a single FedData, ``/<name>`` for each entry of a dict):

- ``GET  {base}/``                          the status page, for people
- ``GET  {base}/info``                      handshake
- ``POST {base}/{rep}/submit``              hand the device a payload for repetition ``rep``
- ``GET  {base}/{rep}/result?wait=S``       long-poll for the device's payload (``HEAD``: is it ready?)
- ``POST {base}/{rep}/evaluate``            evaluate a payload on local data, without training
- ``POST {base}/{rep}/secagg/{phase}``      secure aggregation's phases (:mod:`fedsync.secagg.device`)

and, at the root of a device serving named bases only:

- ``GET  /info``                            the bases, as JSON
- ``GET  /``                                the bases, as a page
"""

from __future__ import annotations

import functools
import hmac
import io
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.wrappers import Request, Response

from .._util.checks import is_int
from .._version import PROTOCOL_VERSION, __version__
from ..errors import UnknownBase
from ..gateway.server import SOCKET_KEY, TRUST_KEY
from ..protocol import MAX_REPETITION, FedData
from ..secagg.device import MAX_BODY as SECAGG_MAX_BODY
from ..secagg.device import answer as secagg_answer
from ..secagg.device import session_for_submit
from ..wire.codec import read_exactly
from ..wire.config import Config, decode_config
from ..wire.http import (
    CONFIG_HEADER,
    DEADLINE_HEADER,
    INDEX_ROUTES,
    MAX_PAYLOAD,
    MAX_WAIT,
    REPETITION_HEADER,
    ROUTES,
    SECAGG_PHASES,
    SPECS_HEADER,
    ApiError,
    ErrorCode,
    json_response,
)
from ..wire.tokens import checked_token
from ..wire.transfer import parse_deadline, parse_seconds
from ._resume import UPLOAD_LENGTH, UPLOAD_OFFSET, check_resumable, range_start, received, sent, upload_number
from ._state import Device, PartialUpload, checked_repetition
from ._status import content_security_policy, render_index, render_locked, render_status

__all__ = ["DeviceApp", "DEFAULT_MAX_CONTENT_LENGTH"]

logger = logging.getLogger("fedsync.server")

DEFAULT_MAX_CONTENT_LENGTH = MAX_PAYLOAD
"""The largest payload a device accepts unless ``max_content_length`` says otherwise, in bytes."""


class _Repetition(BaseConverter):
    """A repetition in a URL: ASCII digits only (``\\d`` would take other scripts' digits too)."""

    regex = r"[0-9]+"

    def to_python(self, value: str) -> int:
        # Longer than MAX_REPETITION's 16 digits: above it, whatever its value. Avoids
        # converting thousands of digits (ValueError past Python's int-string limit).
        return int(value) if len(value) <= 17 else MAX_REPETITION + 1

    def to_url(self, value: Any) -> str:
        return str(int(value))


class DeviceApp:
    """The WSGI application of a device, serving one FedData or a dict of named ones.

    Raises:
        ValueError: an empty dict, a name that cannot be a URL base, or a bad
            token (see :func:`checked_token`).
        TypeError: ``data`` is not a FedData or a dict of them.
    """

    def __init__(
        self,
        data: FedData | Mapping[str, FedData],
        *,
        token: str | None = None,
        max_content_length: int | None = None,
        secure_aggregation: str | None = None,
    ) -> None:
        self.token = checked_token(token)
        if secure_aggregation not in (None, "required"):
            raise ValueError(f"secure_aggregation must be None or 'required', got {secure_aggregation!r}")
        self._expected_auth = None if self.token is None else self.token.encode("ascii")
        if isinstance(data, Mapping):
            if not data:
                raise ValueError("serve() got an empty dict; give at least one {name: FedData}")
            for name in data:
                if not isinstance(name, str) or not name or "/" in name or name.isdigit():
                    raise ValueError(
                        f"FedData name {name!r} cannot be a URL base; use a non-numeric word without '/', e.g. 'model'"
                    )
            self.devices = {f"/{name}": Device(fed) for name, fed in data.items()}
        else:
            self.devices = {"": Device(data)}
        for device in self.devices.values():
            device.secagg_required = secure_aggregation == "required"
        if max_content_length is not None and (not is_int(max_content_length) or max_content_length < 0):
            raise ValueError(
                "max_content_length must be a number of bytes >= 0 (0 or None: the default, 2 GiB), got "
                f"{max_content_length!r}"
            )
        self.max_content_length = max_content_length or DEFAULT_MAX_CONTENT_LENGTH
        self.url_map = _url_map(tuple(self.devices))

    # -- routes ------------------------------------------------------------------

    def on_index(self, request: Request) -> Response:
        return json_response(
            {"protocol": PROTOCOL_VERSION, "fedsync": __version__, "bases": [b[1:] for b in self.devices]}
        )

    def on_index_page(self, request: Request) -> Response:
        return Response(render_index([b[1:] for b in self.devices]), mimetype="text/html")

    def on_status(self, request: Request, base: str) -> Response:
        device = self.devices[base]
        title = f"{type(device.fed).__name__}{' at ' + base if base else ''}"
        return Response(render_status(device.info(), title), mimetype="text/html")

    def on_info(self, request: Request, base: str) -> Response:
        return json_response(self.devices[base].info())

    def on_submit(self, request: Request, base: str, rep: int) -> Response:
        device = self.devices[base]
        checked_repetition(rep)
        if UPLOAD_OFFSET in request.headers:
            return self._resumed_submit(request, device, rep)
        device.ensure_can_accept(rep)
        session_for_submit(device, rep, device.secagg_required)  # refused before any body is read
        length = self._checked_length(request)
        _check_size(device, rep, length)
        self._check_specs(request, device, rep)
        config = _checked_config(request)
        _checked_deadline(request)  # a bad one refused before the body is read (and read again at start)
        _hold(request, device.take_receiving())  # one payload in memory at a time, the others 409 unread
        device.ensure_can_accept(rep)  # again, now that no other body can arrive: read none in vain
        device.drop_upload()  # a fresh submission replaces a broken one (its buffer may serve this one)
        binary = device.fed.accepts_views and request.mimetype != "text/plain"
        reused = device.payload_buffer(length) if binary else None
        buffer = (reused if reused is not None else np.empty(length, np.uint8)) if binary else bytearray(length)
        del reused
        partial = PartialUpload(rep, length, sent(request), buffer)
        device.begin_upload(partial)
        del buffer
        encoding = received(request, device, partial)
        job = device.start(encoding, rep, config, _checked_deadline(request))
        return json_response({"repetition": job.repetition, "state": "training"}, 202)

    def on_submit_offset(self, request: Request, base: str, rep: int) -> Response:
        """``HEAD {rep}/submit``: how many bytes of a broken submission the device holds (``Upload-Offset``)."""
        checked_repetition(rep)
        partial = self.devices[base].upload_for(rep)
        headers = {
            UPLOAD_OFFSET: str(partial.received),
            UPLOAD_LENGTH: str(partial.length),
            "Cache-Control": "no-store",
        }
        return Response(status=204, headers=headers)

    def _resumed_submit(self, request: Request, device: Device, rep: int) -> Response:
        """``POST {rep}/submit`` with ``Upload-Offset: N``: the rest of a broken submission, from byte N."""
        offset = upload_number(request, UPLOAD_OFFSET)
        total = upload_number(request, UPLOAD_LENGTH)
        length = self._checked_length(request)
        if offset > total or length != total - offset:
            raise ApiError(
                400,
                ErrorCode.BAD_UPLOAD_OFFSET,
                f"Upload-Offset {offset} with Upload-Length {total} leaves {max(0, total - offset)} bytes to send, "
                f"but Content-Length is {length}; send the rest of the payload, from the offset HEAD answered",
            )
        _check_size(device, rep, total)
        device.ensure_can_accept(rep)
        session_for_submit(device, rep, device.secagg_required)
        self._check_specs(request, device, rep)
        config = _checked_config(request)
        check_resumable(device.upload_for(rep), request, offset, total)  # before taking the one receiving slot
        _hold(request, device.take_receiving())
        device.ensure_can_accept(rep)
        # Again, now that this request holds the one receiving slot: it may have moved meanwhile.
        partial = device.resume_upload(rep, lambda held: check_resumable(held, request, offset, total))
        encoding = received(request, device, partial)
        job = device.start(encoding, rep, config, _checked_deadline(request))
        return json_response({"repetition": job.repetition, "state": "training"}, 202)

    def on_evaluate(self, request: Request, base: str, rep: int) -> Response:
        device = self.devices[base]
        checked_repetition(rep)
        if device.secagg_required:
            # An evaluation's answer is this device's own sample count and metrics, in the clear:
            # a device that takes part only in securely aggregated rounds shows neither.
            raise ApiError(
                409,
                ErrorCode.SECURE_AGGREGATION_REQUIRED,
                "this device takes part only in securely aggregated rounds, and a plain evaluation would show the "
                "coordinator its own sample count and metrics; evaluate on devices served without "
                "secure_aggregation='required', or with Federated(..., evaluate_fn=...) on the coordinator",
            )
        device.ensure_can_evaluate()
        length = self._checked_length(request)
        _check_size(device, rep, length)  # 413 before the specs, as on submit (docs/protocol.md's order)
        self._check_specs(request, device, rep)
        config = _checked_config(request)
        _hold(request, device.take_receiving())
        device.ensure_can_evaluate()  # again, now that no other body can arrive
        encoding = self._checked_payload(request, device, rep, length)
        samples, metrics, *weights = device.evaluate(encoding, rep, config, _checked_deadline(request))
        answer = {"repetition": rep, "samples": samples, "metrics": metrics}
        return json_response({**answer, "weights": weights[0]} if weights and weights[0] else answer)

    def on_secagg(self, request: Request, base: str, rep: int, phase: str) -> Response:
        """A secure-aggregation phase (fedsync.secagg.device): a bounded JSON body in, JSON out.

        The body is read before anything of the device is taken: a peer trickling it holds no
        lock an honest request needs. Memory stays bounded by connections x ``SECAGG_MAX_BODY``
        (the gateway also ends a body slower than its minimum rate).
        """
        checked_repetition(rep)
        length = self._checked_length(request, limit=SECAGG_MAX_BODY)
        body = _read_payload(request, length)
        return json_response(secagg_answer(self.devices[base], rep, phase, bytes(body)))

    def _checked_length(self, request: Request, limit: int | None = None) -> int:
        """The request's Content-Length, checked against the limit before any byte of the body is read."""
        raw = request.headers.get("Content-Length")
        if raw is None or not raw.strip():
            raise ApiError(411, ErrorCode.LENGTH_REQUIRED, "send the payload with a Content-Length header")
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit()):
            raise ApiError(
                400,
                ErrorCode.BAD_CONTENT_LENGTH,
                f"Content-Length {raw[:40]!r} is not a number of bytes; send one decimal integer",
            )
        limit = self.max_content_length if limit is None else limit
        if len(raw) > 19 or int(raw) > limit:
            raise ApiError(
                413,
                ErrorCode.TOO_LARGE,
                f"payload of {raw[:40]} bytes exceeds this device's limit of {limit}; "
                "start the device with a larger max_content_length",
            )
        return int(raw)

    @staticmethod
    def _check_specs(request: Request, device: Device, rep: int) -> None:
        specs = request.headers.get(SPECS_HEADER)
        if specs is None:
            raise ApiError(400, ErrorCode.MISSING_SPECS, f"send the FedData's specs in the {SPECS_HEADER} header")
        expected = device.fed.specs(rep)
        if specs != expected:
            raise ApiError(
                409,
                ErrorCode.SPECS_MISMATCH,
                f"payload specs {specs[:200]!r} do not match this device's {expected!r}; "
                "declare the same FedData (same architecture) on coordinator and device",
            )

    @staticmethod
    def _checked_payload(request: Request, device: Device, rep: int, length: int) -> Any:
        """Read the body (``length`` bytes) and run the FedData's own check; the payload, or an ApiError.

        A body larger than the FedData's :meth:`~fedsync.protocol.FedData.max_payload` is
        refused ``413 too_large`` from its Content-Length alone, before any byte is read.
        """
        _check_size(device, rep, length)
        encoding = _read_payload(request, length, as_view=device.fed.accepts_views)
        try:
            device.fed.check(encoding, rep)
        except UnknownBase as exc:  # the coordinator sends the whole model instead
            raise ApiError(409, ErrorCode.UNKNOWN_BASE, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, ErrorCode.MALFORMED_PAYLOAD, f"payload rejected: {exc}") from None
        return encoding

    def on_result(self, request: Request, base: str, rep: int) -> Response:
        device = self.devices[base]
        checked_repetition(rep)
        job = device.job
        if job is None or job.repetition != rep:
            known = "none" if job is None else str(job.repetition)
            raise ApiError(404, ErrorCode.UNKNOWN_REPETITION, f"no work for repetition {rep} here (current: {known})")
        wait = _wait(request.args.get("wait", "0"))
        if not job.done.wait(min(wait, MAX_WAIT)):
            return json_response({"repetition": rep, "state": "training"}, 202)
        if job.error is not None:
            raise ApiError(500, ErrorCode.TRAINING_FAILED, job.error)
        if request.method == "HEAD":
            # A readiness check: do not build the body just to throw it away.
            return Response(status=200, headers={REPETITION_HEADER: str(rep)})
        first = range_start(request.headers.get("Range"))  # a resumed download: bytes=N- (None: the whole)
        headers = {SPECS_HEADER: device.fed.specs(rep), REPETITION_HEADER: str(rep)}  # before counting a download
        body, mimetype, length = device.open_download(job, request.environ.get(SOCKET_KEY), first or 0)
        status = 200
        if first is not None:
            status, headers["Content-Range"] = 206, f"bytes {first}-{length - 1}/{length}"
        response = Response(body, status=status, mimetype=mimetype, headers=headers, direct_passthrough=True)
        response.content_length = length - (first or 0)
        return response

    # -- WSGI ----------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if self._expected_auth is None:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        given = credentials.strip().encode("utf-8", "surrogateescape")
        # Always compare, so the time taken does not tell a wrong scheme from a wrong token.
        same = hmac.compare_digest(given, self._expected_auth)
        return same and scheme.lower() == "bearer"

    def dispatch(self, request: Request) -> Response:
        """The answer to ``request``; any exception but the connection's own becomes ``500 internal_error``."""
        held: list[threading.Lock] = []
        request.environ[_HELD] = held
        try:
            # Before routing: a prober without the token learns nothing of the bases served.
            if not self._authorized(request):
                if _browser_navigation(request):
                    # The same page for every path: it asks for the token and shows nothing before.
                    return Response(
                        render_locked(), status=401, mimetype="text/html", headers={"Cache-Control": "no-store"}
                    )
                raise _unauthorized(request)
            trust = request.environ.get(TRUST_KEY)
            if trust is not None:  # the gateway keeps this connection's slot when strangers fill the others
                trust()
            # Routed on the path alone: the Host header plays no part (it is the client's to garble).
            adapter = self.url_map.bind("device", url_scheme="http")
            endpoint, values = adapter.match(request.path, _method(request.environ.get("REQUEST_METHOD", "")))
            return getattr(self, f"on_{endpoint}")(request, **values)
        except ApiError as exc:
            return exc.get_response()
        except MethodNotAllowed as exc:
            allowed = " or ".join(m for m in ("GET", "HEAD", "POST") if m in (exc.valid_methods or ()))
            method = request.environ.get("REQUEST_METHOD", "")
            return json_response(
                {
                    "error": ErrorCode.METHOD_NOT_ALLOWED,
                    "message": (
                        f"{method[:20]!r} is not allowed on {request.path[:200]!r}; use {allowed} "
                        "(methods are case-sensitive)"
                    ),
                },
                405,
            )
        except NotFound:
            routes = ", ".join(f"{base}/info" for base in self.devices)
            return json_response(
                {
                    "error": ErrorCode.NOT_FOUND,
                    "message": (
                        f"no route {request.path[:200]!r} here; this device serves {routes} and "
                        "{base}/{rep}/submit|result|evaluate"
                    ),
                },
                404,
            )
        except HTTPException as exc:  # any other routing error: still the client's request at fault
            # A fallback whose code is werkzeug's name for the exception, outside ErrorCode: the url
            # map (no redirects) answers a client's paths and methods with the two above.
            code = exc.code if exc.code is not None and 400 <= exc.code < 500 else 400
            return json_response({"error": exc.name.lower().replace(" ", "_"), "message": exc.description}, code)
        except (ConnectionError, TimeoutError):
            raise  # the connection's own failure (or a body too slow): the gateway ends it, nothing to answer
        except Exception:
            # A fault of this device, not of the request: a JSON answer on a connection that stays
            # usable, never a dropped one (which a coordinator can only report as unreachable).
            logger.exception("error answering %s %s", request.method, request.path[:200])
            return json_response(
                {
                    "error": ErrorCode.INTERNAL_ERROR,
                    "message": "the device failed answering this request (a bug of the device; its log has the "
                    "traceback); retry, or report it",
                },
                500,
            )
        finally:
            # Only now: an error's traceback, freed with it above, may reference the payload.
            for lock in held:
                lock.release()

    def wsgi_app(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        _protect(response)
        return response(environ, start_response)

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)


@functools.lru_cache(maxsize=64)
def _url_map(bases: tuple[str, ...]) -> Map:
    """The routes of a device serving ``bases``; shared by every device serving the same ones.

    Built once: werkzeug compiles Python code for each rule (about 12 ms per device,
    measured), which a simulation building 100 devices a round paid every round. A
    bound Map is only read by requests, so sharing it is safe.
    """
    rules = []
    for base in bases:
        defaults = {"base": base}
        rules += [
            Rule(base + _rule_path(route.path), endpoint=route.endpoint, methods=[route.method], defaults=defaults)
            for route in ROUTES
        ]
    if "" not in bases:
        rules += [Rule(route.path, endpoint=route.endpoint, methods=[route.method]) for route in INDEX_ROUTES]
    # No redirects: a redirect's Location would be built from the client's Host header.
    return Map(rules, converters={"rep": _Repetition}, strict_slashes=False, merge_slashes=False)


def _rule_path(path: str) -> str:
    """A :class:`fedsync.wire.http.Route` path as a werkzeug rule: ``{rep}`` and ``{phase}`` become converters."""
    return path.format(rep="<rep:rep>", phase=f"<any({','.join(SECAGG_PHASES)}):phase>")


def _unauthorized(request: Request) -> ApiError:
    """The ``401`` for a request without the device's token: its token is missing, or it was refused.

    The messages never put a word after "Bearer": a coordinator redacts whatever follows it.
    """
    if not request.headers.get("Authorization", "").strip():
        return ApiError(
            401,
            ErrorCode.UNAUTHORIZED,
            "token missing: this device requires a token and the request carried none; send the device's token "
            "in an Authorization header of scheme Bearer: Remote(url, token=...) or $FEDSYNC_TOKEN",
        )
    return ApiError(
        401,
        ErrorCode.UNAUTHORIZED,
        "token refused: the Authorization header does not carry this device's token (or its scheme is not "
        "Bearer); send the token the device was started with (fedsync serve --token, $FEDSYNC_TOKEN)",
    )


_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""The Content-Security-Policy of an answer that is not a page (JSON, payloads): it may run and embed nothing."""


def _protect(response: Response) -> None:
    """Add the headers that keep a browser from sniffing, framing or leaking an answer of this device.

    A page gets a policy allowing its own inline script and style by hash (:func:`content_security_policy`).
    """
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if "Content-Security-Policy" in response.headers:
        return
    if response.mimetype == "text/html" and not response.direct_passthrough:
        response.headers["Content-Security-Policy"] = content_security_policy(response.get_data(as_text=True))
    else:
        response.headers["Content-Security-Policy"] = _API_POLICY


def _check_size(device: Device, rep: int, length: int) -> None:
    """Refuse ``413 too_large`` a payload of ``length`` bytes above the FedData's
    :meth:`~fedsync.protocol.FedData.max_payload`, from its Content-Length alone (before any byte is read)."""
    largest = _max_payload(device.fed, rep)
    if largest is not None and length > largest:
        raise ApiError(
            413,
            ErrorCode.TOO_LARGE,
            f"payload of {length} bytes is larger than any payload of this device's model ({largest} bytes at "
            "most); send this FedData's own payload (same architecture on coordinator and device)",
        )


def _max_payload(fed: FedData, rep: int) -> int | None:
    """The FedData's :meth:`~fedsync.protocol.FedData.max_payload`, or ``None`` when it names no valid bound."""
    method = getattr(fed, "max_payload", None)
    if method is None:
        return None
    largest = method(rep)
    return largest if is_int(largest) and largest >= 0 else None


_HELD = "fedsync.held"
"""Environ key of the locks a request holds until its answer is built (see ``dispatch``)."""


def _hold(request: Request, lock: threading.Lock) -> None:
    request.environ[_HELD].append(lock)


def _browser_navigation(request: Request) -> bool:
    """A browser asking for a page (its Accept names text/html); API clients and fetch() send ``*/*`` or JSON."""
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "")


def _method(raw: str) -> str:
    """The request's method as routed: methods are case-sensitive, werkzeug would uppercase ``get``."""
    return raw if raw in ("GET", "HEAD", "POST") else "UNSUPPORTED"


def _checked_config(request: Request) -> Config:
    """The ``X-Fedsync-Config`` header as a checked config (``{}`` without one), or a ``400 bad_config`` ApiError."""
    raw = request.headers.get(CONFIG_HEADER)
    if raw is None:
        return {}
    try:
        return decode_config(raw)
    except ValueError as exc:
        raise ApiError(
            400, ErrorCode.BAD_CONFIG, f"{CONFIG_HEADER} rejected: {exc}; send a JSON object of at most 64 keys "
            'mapped to strings, numbers or booleans, e.g. {"lr": 0.01, "epochs": 1}',
        ) from None  # fmt: skip


def _checked_deadline(request: Request) -> float | None:
    """``X-Fedsync-Deadline`` in seconds (``None`` without one), or a ``400 bad_deadline`` ApiError."""
    raw = request.headers.get(DEADLINE_HEADER)
    try:
        return None if raw is None else parse_deadline(raw)
    except ValueError as exc:
        raise ApiError(400, ErrorCode.BAD_DEADLINE, f"{DEADLINE_HEADER} rejected: {exc}") from None


def _wait(raw: str) -> float:
    """The ``wait`` query value in seconds, or a ``400 bad_wait`` ApiError."""
    try:  # a plain decimal, as any language writes it (#24): no exponent, underscore, sign or inf
        return parse_seconds(raw)
    except ValueError as exc:
        raise ApiError(400, ErrorCode.BAD_WAIT, f"wait must be a number of seconds, e.g. ?wait=10: {exc}") from None


def _read_payload(request: Request, length: int, as_view: bool = False, into: Any = None) -> Any:
    """Read exactly ``length`` bytes into one buffer; decode UTF-8 for text/plain.

    ``as_view``: a binary payload comes as a memoryview of numpy-allocated
    memory (see :func:`fedsync.wire.codec.read_exactly`), ``into`` if given.
    """
    # Content-Length is known and checked, so read the server's input directly: it fills
    # our buffer from the socket, where werkzeug's LimitedStream would add a copy.
    raw = request.environ["wsgi.input"]
    # werkzeug types its stream IO[bytes]; it is a LimitedStream (an io.RawIOBase) or a BytesIO.
    stream = raw if hasattr(raw, "readinto") else cast("io.RawIOBase | io.BufferedIOBase", request.stream)
    binary_view = as_view and request.mimetype != "text/plain"
    buffer = read_exactly(stream.readinto, length, as_view=binary_view, into=into if binary_view else None)
    if len(buffer) != length:
        raise ApiError(400, ErrorCode.TRUNCATED, f"payload ended after {len(buffer)} of {length} bytes")
    if request.mimetype == "text/plain":
        try:
            return str(buffer, "utf-8")  # a bytearray, or a view of one
        except UnicodeDecodeError as exc:
            raise ApiError(400, ErrorCode.MALFORMED_PAYLOAD, f"text/plain payload is not UTF-8: {exc}") from None
    return buffer
