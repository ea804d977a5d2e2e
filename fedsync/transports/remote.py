"""A device as the coordinator sees it: :class:`Remote`, fedsync's protocol over a transport.

A :class:`Remote` knows the routes, the headers and every check of an answer; the bytes travel
through its :class:`~fedsync.transports.base.Transport`: HTTP (:mod:`fedsync.transports.http`,
what ``Remote(url)`` builds), or any other (``Remote(url, transport=...)``).

Everything a device answers is checked before use: JSON answers are read up
to ``MAX_JSON`` bytes as strict JSON (unique keys, no ``NaN``/``Infinity``),
error bodies up to ``MAX_ERROR_BODY``, headers must be
well-formed, and numbers are bounded (``MAX_REPETITION``, ``MAX_SAMPLES``,
finite metrics). A bad answer raises a :class:`~fedsync.errors.RemoteError`
naming the device, which a round records as that device's failure. No error
text carries the token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

from .._util.checks import is_int, positive_seconds
from .._util.json import shown
from ..errors import (
    PayloadRejected,
    RemoteBusy,
    RemoteError,
    RemoteUnavailable,
    SpecsMismatch,
    TrainingFailed,
)
from ..plugins.hookspecs import RegisterTransport, hookimpl
from ..protocol import MAX_REPETITION, Encoding
from ..wire.codec import Payload, read_exactly
from ..wire.config import encode_config
from ..wire.http import CONFIG_HEADER, DEADLINE_HEADER, MAX_PAYLOAD, REPETITION_HEADER, SPECS_HEADER, ErrorCode
from ..wire.replies import ReplyStream
from ..wire.reports import evaluation_report
from ..wire.shapes import DeviceInfo, EvaluationAnswer
from ..wire.tokens import checked_token
from ..wire.transfer import MAX_DEADLINE, Deadline, content_length, read_capped
from ._answers import Refused, parsed, refusal
from ._resume import Resumes, ResumingAnswer, checked_resumed, submit_resuming
from .base import Answer, Body, Transport
from .http import HTTPTransport

__all__ = ["Remote", "MAX_REPLY", "MAX_JSON", "MAX_ERROR_BODY", "MAX_SPECS", "size"]

MAX_REPLY = MAX_PAYLOAD
"""Default largest whole result a :class:`Remote` downloads, in bytes (as a device's default limit)."""

MAX_JSON = 1024**2
"""The largest JSON answer (``/info``, an evaluation), in bytes, a :class:`Remote` reads."""

MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error answer read for its message; the rest is never read."""

MAX_SPECS = 4096
"""The longest specs string, in characters, a device may report."""


def _environment_token() -> str | None:
    """``$FEDSYNC_TOKEN`` checked like a given token, or ``None`` when it is not set."""
    token = os.environ.get("FEDSYNC_TOKEN")
    try:
        return checked_token(token)
    except ValueError as exc:
        raise ValueError(
            f"bad token in $FEDSYNC_TOKEN: {exc}; fix or unset the variable, or pass Remote(url, token=...)"
        ) from None


class Remote:
    """A device as seen from the coordinator: its URL, fedsync's protocol, and a transport.

    Every call has a timeout; over HTTP, connection errors are retried with backoff
    (``retries`` times), other errors are not. Use it as a context manager, or
    call :meth:`close`, to release its connections.

    Args:
        url: the device's base URL, e.g. ``"http://127.0.0.1:8000"`` (or with a
            named base: ``"http://host:8000/model"``); with ``transport``, any URL
            naming the device (failures and history are keyed by it).
        timeout: seconds for connecting and for each answer.
        token: sent as ``Authorization: Bearer <token>`` (see ``serve(token=...)``);
            surrounding whitespace is stripped (a token read from a file). ``None``
            (the default) takes ``$FEDSYNC_TOKEN`` if it is set, as ``fedsync serve``
            and ``fedsync info`` do, so one exported variable serves both sides.
        retries: connection attempts retried with backoff (an integer >= 0).
        verify: TLS verification for ``https://``: ``True``, ``False`` or a CA bundle path.
        cert: mutual TLS: this coordinator's client certificate, as a ``(certfile, keyfile)``
            pair of PEM files (or one file holding both), for devices started with
            ``serve(..., client_ca=...)``. ``fedsync certs coordinator`` makes one.
        crl: revocation list(s) of ``verify``'s CA: revoked devices are refused (see HTTPTransport).
        max_reply: the largest result, in bytes (a positive integer), downloaded whole
            (FedData that read replies as streams check their size against the model instead).
        transport: the :class:`~fedsync.transports.base.Transport` that carries the
            requests; ``None`` (the default) builds an
            :class:`~fedsync.transports.http.HTTPTransport` from ``url``, ``timeout``,
            ``token``, ``retries``, ``verify``, ``cert`` and ``crl`` (which configure HTTP only).

    Raises:
        ValueError: a URL that is not http(s) (without ``transport``), a timeout that is
            not positive, ``max_reply`` not a positive integer, ``retries`` not an integer >= 0,
            or an empty token or one with control or non-ASCII characters (not shown), given or
            from ``$FEDSYNC_TOKEN``.
        FileNotFoundError: a ``cert`` file that does not exist.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        retries: int = 3,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        max_reply: int = MAX_REPLY,
        transport: Transport | None = None,
        crl: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    ) -> None:
        if transport is None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ValueError(
                f"Remote URL must start with http:// or https://, got {url!r}; e.g. Remote('http://127.0.0.1:8000')"
            )
        if not isinstance(url, str) or not url:
            raise ValueError(f"Remote URL must be a non-empty string, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = float(positive_seconds("timeout", timeout))
        if not is_int(max_reply) or max_reply < 1:
            raise ValueError(
                f"max_reply must be a positive integer number of bytes, got {shown(max_reply)}; e.g. 2**30"
            )
        if not is_int(retries) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {shown(retries)}; e.g. Remote(url, retries=3)")
        self.max_reply = max_reply
        if transport is None:
            token = checked_token(token) if token is not None else _environment_token()
            transport = HTTPTransport(
                self.url, timeout=self.timeout, token=token, retries=retries, verify=verify, cert=cert, crl=crl
            )
        self.transport = transport  # what carries this remote's requests
        self.resumes = Resumes()  # transfers resumed after a break (fedsync.transports._resume)

    @property
    def resent_bytes(self) -> int:
        """Bytes this remote sent or received more than once because a transfer broke and resumed."""
        return self.resumes.resent

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def scrub(self, text: str) -> str:
        """``text`` without the token or any ``Bearer`` credential (for error messages)."""
        return self.transport.scrub(text)

    # -- calls -----------------------------------------------------------------

    def info(self, *, deadline: Deadline | None = None) -> DeviceInfo:
        """The device's handshake: protocol, specs, last repetition, state, summary.

        ``deadline`` bounds the whole call (default: ``timeout`` seconds).

        Raises:
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: an answer that is not a fedsync handshake: no specs string (of at most
                ``MAX_SPECS`` characters), or a ``repetition`` that is not an integer in ``[0, MAX_REPETITION]``.
        """
        deadline = deadline or Deadline.within(self.timeout)
        info = self.get_json("/info", deadline=deadline, what="/info")
        if not isinstance(info, dict) or not isinstance(info.get("specs"), str):
            raise RemoteError(self.url, "/info answered no specs; is this a fedsync device?")
        if not 0 < len(info["specs"]) <= MAX_SPECS:
            raise RemoteError(
                self.url, f"/info answered specs of {len(info['specs'])} characters; expected 1 to {MAX_SPECS}"
            )
        repetition = info.get("repetition", 0)
        if not is_int(repetition) or not 0 <= repetition <= MAX_REPETITION:
            clipped = shown(repetition, 40)
            raise RemoteError(self.url, f"/info answered repetition {clipped}; expected an integer in [0, 2**53]")
        return cast(DeviceInfo, info)  # specs and repetition checked; DeviceInfo leaves the other keys unchecked

    def submit(
        self,
        repetition: int,
        payload: Encoding,
        specs: str,
        *,
        timeout: float | None = None,
        config: Mapping[str, Any] | None = None,
        deadline: Deadline | None = None,
    ) -> None:
        """Hand the device ``payload`` for ``repetition``; returns once it accepted (202).

        ``config``: the round's configuration (:mod:`fedsync.wire.config`), sent in the
        ``X-Fedsync-Config`` header when not empty. A body whose connection breaks part-way
        resumes from the bytes the device holds (docs/protocol.md, "Transfers that resume"),
        no resumption starting past ``deadline``.

        Raises:
            SpecsMismatch: the device holds other specs (409 ``specs_mismatch``).
            RemoteBusy: the device is still working or serving (409 ``busy``).
            PayloadRejected: the device refused the payload (400, 411 or 413).
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: any other refusal, e.g. 409 ``stale_repetition``.
        """
        body, mimetype = _request_body(payload)
        wait = timeout or self.timeout
        headers = _headers(specs, mimetype, config, deadline)
        answer = submit_resuming(self, repetition, headers, body, wait, deadline)
        # Its JSON says nothing the status did not; read (bounded) so the connection is reused.
        read_capped(answer, MAX_JSON, Deadline.within(wait), self.url, truncate=True)

    def ready(self, repetition: int, wait: float, *, timeout: float | None = None) -> bool:
        """Long-poll up to ``wait`` seconds for the result without downloading it.

        ``True`` once the result is ready, ``False`` if the device is still working.

        Raises:
            TrainingFailed: the device's training raised; the message is the device's.
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: any other error answer (e.g. 404 ``unknown_repetition``).
        """
        answer = self._poll("HEAD", repetition, wait, timeout, check=False)
        answer.close()
        if answer.status == 200:
            return True
        if answer.status == 202:
            return False
        # A HEAD answer has no body: ask again with GET, which carries the device's message.
        return self.result(repetition, 0.0) is not None

    def result(
        self,
        repetition: int,
        wait: float,
        *,
        timeout: float | None = None,
        as_view: bool = False,
        deadline: Deadline | None = None,
    ) -> Encoding | None:
        """Long-poll up to ``wait`` seconds; the device's payload, or ``None`` if still working.

        ``as_view``: return a binary payload as a memoryview of a numpy-allocated
        buffer (see ``FedData.accepts_views``) rather than ``bytes``. ``deadline``
        bounds reading the body (default: ``wait`` plus ``timeout`` seconds).

        Raises:
            TrainingFailed: the device's training raised; the message is the device's.
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: the result is over ``max_reply`` bytes, not UTF-8 text
                where it says so, did not arrive in time, or another error answer.
        """
        if deadline is None:
            deadline = Deadline.within(wait + (timeout if timeout is not None else self.timeout))
        answer = self._result_answer(repetition, wait, timeout)
        if answer is None:
            return None
        if "Content-Length" not in answer.headers:  # streamed without a length: read up to max_reply
            body = read_capped(
                answer,
                self.max_reply,
                deadline,
                self.url,
                limit="max_reply",
                advice="; raise it with Remote(url, max_reply=...)",
            )
            return self._decoded(body, str(answer.headers.get("Content-Type", "")))
        stream = self._stream(repetition, answer, timeout, deadline)
        return self.download(stream, as_view=as_view)

    def open_result(
        self,
        repetition: int,
        wait: float = 0.0,
        *,
        timeout: float | None = None,
        deadline: Deadline | float | None = None,
    ) -> ReplyStream | None:
        """Long-poll up to ``wait`` seconds; the result as a :class:`~fedsync.wire.replies.ReplyStream`
        whose body is not read yet, or ``None`` if the device is still working.

        ``deadline`` (a :class:`~fedsync.wire.transfer.Deadline`, or a ``time.monotonic()``
        value) bounds reading the body (default: ``wait`` plus ``timeout`` seconds, as
        for :meth:`result`).

        Raises:
            TrainingFailed: the device's training raised; the message is the device's.
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: no valid ``Content-Length``, or another error answer.
        """
        if not isinstance(deadline, Deadline):
            # Not NEVER: an unbounded deadline would let a stalled device hold the reader for ever
            # (and an infinite socket timeout is refused: OverflowError).
            default = Deadline.within(wait + (timeout if timeout is not None else self.timeout))
            deadline = default if deadline is None else Deadline(float(deadline))

        answer = self._result_answer(repetition, wait, timeout)
        return None if answer is None else self._stream(repetition, answer, timeout, deadline)

    def _stream(self, repetition: int, answer: Answer, timeout: float | None, deadline: Deadline) -> ReplyStream:
        """A result's answer as a :class:`ReplyStream` (which can ask for it again)."""

        def sized(answer: Answer) -> tuple[Answer, int]:
            length = content_length(answer.headers.get("Content-Length"))
            if length is None:
                answer.close()
                raise RemoteError(
                    self.url,
                    "sent its result without a valid Content-Length (decimal digits); a fedsync device sends one",
                )
            what = f"the result of repetition {repetition}"
            return ResumingAnswer(answer, length, reopen, self.url, what, self.resumes), length

        def reopen(offset: int, deadline: Deadline) -> Answer:  # the rest, after a break: Range: bytes=N-
            timeout = deadline.request_timeout(self.timeout)
            answer = self._poll("GET", repetition, 0.0, timeout, headers={"Range": f"bytes={offset}-"})
            return checked_resumed(answer, repetition, self.url)

        def open_again() -> tuple[Answer, int]:
            again = self._result_answer(repetition, 0.0, deadline.request_timeout(self.timeout))
            if again is None:
                raise RemoteError(self.url, f"no longer has the result of repetition {repetition}")
            return sized(again)

        stream = ReplyStream(self.url, sized(answer), open_again, deadline)
        stream.content_type = str(answer.headers.get("Content-Type", ""))
        return stream

    def download(self, stream: ReplyStream, *, as_view: bool = False) -> Encoding:
        """Read an opened result whole: ``str`` for ``text/plain``, else bytes (a memoryview with ``as_view``).

        Raises:
            RemoteError: over ``max_reply`` bytes (nothing is read), or text that is not UTF-8.
        """
        with_text = stream.content_type.startswith("text/plain")
        try:
            if len(stream) > self.max_reply:
                raise RemoteError(
                    self.url,
                    f"announced a result of {len(stream)} bytes, over max_reply ({self.max_reply}); "
                    "raise it with Remote(url, max_reply=...)",
                )
            if as_view and not with_text:
                return stream.read_all()
            body = read_exactly(stream.readinto, len(stream))
        finally:
            stream.close()
        return self._decoded(body, stream.content_type)

    def _decoded(self, body: bytes | bytearray | memoryview, content_type: str) -> Encoding:
        """``str`` for a ``text/plain`` result, else ``bytes``."""
        if content_type.startswith("text/plain"):
            try:
                return str(body, "utf-8")
            except UnicodeDecodeError:
                raise RemoteError(self.url, "sent a text/plain result that is not UTF-8") from None
        return bytes(body)

    def evaluate(
        self,
        repetition: int,
        payload: Encoding,
        specs: str,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> EvaluationAnswer:
        """Ask the device to evaluate ``payload`` on its data: ``{"samples": n, "metrics": {...}}``.

        ``config``: as for :meth:`submit`.

        Raises:
            SpecsMismatch: the device holds other specs (409 ``specs_mismatch``).
            RemoteBusy: the device is training or serving (409 ``busy``).
            PayloadRejected: the device refused the payload (400, 411 or 413).
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: the device has no evaluate callback (501 ``not_supported``), its
                callback raised (500 ``evaluation_failed``), or the answer is not JSON with
                a sample count in ``[0, 2**53]`` and finite metrics, or did not arrive
                before ``deadline``.
        """
        body, mimetype = _request_body(payload)
        deadline = deadline or Deadline.within(timeout or self.timeout)
        answer = self.post_json(
            f"/{repetition}/evaluate",
            body,
            deadline=deadline,
            what="the evaluation",
            headers=_headers(specs, mimetype, config, deadline),
            timeout=timeout or self.timeout,
        )
        try:
            return evaluation_report(answer)  # an aggregator's carries each metric's weight too
        except ValueError as exc:
            raise RemoteError(
                self.url, f"evaluation answered no valid samples and metrics: {self.scrub(str(exc))}"
            ) from None

    def post_json(
        self,
        target: str,
        body: Body,
        *,
        deadline: Deadline,
        what: str,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """POST ``body`` to ``target`` (e.g. ``"/3/secagg/keys"``); the device's JSON answer, parsed.

        For JSON exchanges beyond a round's (secure aggregation's phases). ``headers`` default to
        ``Content-Type: application/json``; ``what`` names the exchange in errors. The answer is read
        before ``deadline``; its head is awaited ``timeout`` seconds (default: what ``deadline`` leaves).

        Raises:
            SpecsMismatch, RemoteBusy, PayloadRejected, TrainingFailed: the device's
                refusal, as for :meth:`submit` (the error's ``detail`` holds its JSON object).
            RemoteUnavailable, RemoteTimeout: as for :meth:`info`.
            RemoteError: another refusal, a status other than 200, an answer over
                ``MAX_JSON`` bytes, or one that is not JSON.
        """
        if headers is None:
            headers = {"Content-Type": "application/json"}
        return self._json("POST", target, deadline, what=what, headers=headers, body=body, timeout=timeout)

    def get_json(self, target: str, *, deadline: Deadline, what: str) -> Any:
        """GET ``target`` (e.g. ``"/info"``); the device's JSON answer, parsed, read before ``deadline``.

        Raises:
            RemoteUnavailable, RemoteTimeout, RemoteError: as for :meth:`post_json`.
        """
        return self._json("GET", target, deadline, what=what, headers={})

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str],
        body: Body | None = None,
        timeout: float,
        check: bool = True,
    ) -> Answer:
        """One request through the transport; with ``check``, an error status raises the device's refusal.

        Raises:
            SpecsMismatch, RemoteBusy, TrainingFailed, PayloadRejected, RemoteError: the device's
                refusal (with ``check``), named by its error code.
            RemoteUnavailable, RemoteTimeout, RemoteError: from the transport.
        """
        answer = self.transport.request(method, target, headers=headers, body=body, timeout=timeout)
        if check and answer.status >= 400:
            with answer:
                self._raise_for(answer)
        return answer

    def close(self) -> None:
        """Release the transport's connections (or in-process state)."""
        self.transport.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def _json(
        self,
        method: str,
        target: str,
        deadline: Deadline,
        *,
        what: str,
        headers: Mapping[str, str],
        body: Body | None = None,
        timeout: float | None = None,
    ) -> Any:
        """A strict JSON answer (see ``_answers``) of at most ``MAX_JSON`` bytes, read before ``deadline``."""
        if timeout is None:
            timeout = deadline.request_timeout(self.timeout)
        answer = self.request(method, target, headers=headers, body=body, timeout=timeout)
        if answer.status != 200:
            answer.close()
            raise RemoteError(self.url, f"{what} answered HTTP {answer.status}; expected 200")
        body = read_capped(answer, MAX_JSON, deadline, self.url)
        try:
            return parsed(body)
        except Refused as exc:
            raise RemoteError(self.url, self.scrub(f"{what} answered {exc}")) from None
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            raise RemoteError(self.url, f"{what} did not answer JSON: {self.scrub(repr(body[:200]))}") from None

    def _result_answer(self, repetition: int, wait: float, timeout: float | None) -> Answer | None:
        """``GET {rep}/result?wait=``, its body unread; ``None`` while the device is still working."""
        answer = self._poll("GET", repetition, wait, timeout)
        if answer.status == 202:
            answer.close()
            return None
        if answer.status != 200:
            answer.close()
            raise RemoteError(self.url, f"answered HTTP {answer.status} to a result request; expected 200 or 202")
        answered = answer.headers.get(REPETITION_HEADER)
        if answered is not None and answered != str(repetition):
            answer.close()
            raise RemoteError(self.url, f"answered repetition {shown(answered, 40)} instead of {repetition}")
        return answer

    def _poll(
        self,
        method: str,
        repetition: int,
        wait: float,
        timeout: float | None,
        check: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """A long-poll of ``{rep}/result``: the timeout covers the wait."""
        read_timeout = timeout if timeout is not None else wait + self.timeout
        target = f"/{repetition}/result?wait={wait:.3f}"
        return self.request(method, target, headers=headers or {}, timeout=read_timeout, check=check)

    def _raise_for(self, answer: Answer) -> None:
        status = answer.status
        try:
            # At most MAX_ERROR_BODY bytes, read within the timeout: the message is for people.
            deadline = Deadline.within(self.timeout)
            text = read_capped(answer, MAX_ERROR_BODY, deadline, self.url, truncate=True)
            code, message, detail = refusal(status, text)
        except RemoteError as exc:
            code, message, detail = "http_error", f"HTTP {status} (its message could not be read: {exc.reason})", None
        message = self.scrub(message)
        if code == ErrorCode.SPECS_MISMATCH:
            raise SpecsMismatch(f"{self.url}: {message}", url=self.url)
        if code == ErrorCode.BUSY:
            raise RemoteBusy(self.url, message)
        if code == ErrorCode.TRAINING_FAILED:
            raise TrainingFailed(self.url, f"training failed on the device: {message}")
        if code == ErrorCode.TLS_REQUIRED:  # a plain-HTTP URL for a device that serves HTTPS
            raise RemoteUnavailable(self.url, message)
        if status in (400, 411, 413):
            error: RemoteError | PayloadRejected = PayloadRejected(
                f"{self.url}: device rejected the payload ({status} {code}): {message}", url=self.url
            )
        else:
            error = RemoteError(self.url, f"HTTP {status} {code}: {message}")
        # The refusal's JSON object (at most MAX_ERROR_BODY bytes), for callers that read more than the
        # message, e.g. secure aggregation's "senders" (fedsync.secagg.coordinator); unchecked: check before use.
        error.detail = detail if code != "http_error" and isinstance(detail, dict) else None
        raise error


def _request_body(payload: Encoding) -> tuple[Body, str]:
    """The body every transport is handed: text as UTF-8, any other buffer as bytes (``len`` is its size)."""
    if isinstance(payload, str):
        return payload.encode("utf-8"), "text/plain; charset=utf-8"
    if isinstance(payload, (bytes, bytearray, Payload)):
        return payload, "application/octet-stream"
    # A buffer of wider items (a float32 memoryview, an array): a byte view of it, not a copy, so that a
    # transport's len() (requests' Content-Length, a pipe frame's head) counts bytes, as the device reads them.
    view = memoryview(payload)
    return (view.cast("B") if view.c_contiguous else view.tobytes()), "application/octet-stream"


def _headers(specs: str, mimetype: str, config: Mapping[str, Any] | None, deadline: Deadline | None) -> dict[str, str]:
    headers = {SPECS_HEADER: specs, "Content-Type": mimetype}
    if config:
        headers[CONFIG_HEADER] = encode_config(config)
    if deadline is not None and (left := deadline.left()) <= MAX_DEADLINE:  # an aggregator ends within it
        headers[DEADLINE_HEADER] = f"{max(0.0, left):.3f}"
    return headers


def size(payload: Encoding) -> int:
    """A payload's size in bytes, as sent."""
    if isinstance(payload, str):
        return len(payload.encode("utf-8"))
    if isinstance(payload, (Payload, ReplyStream)):
        return len(payload)
    return memoryview(payload).nbytes


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    """``http`` and ``https``: fedsync's own transport registers like a third party's."""
    register("http", Remote)
    register("https", Remote)
