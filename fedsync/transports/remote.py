"""A device as the coordinator sees it: :class:`Remote`, the HTTP transport of a round.

Everything a device answers is checked before use: JSON answers are read up
to ``MAX_JSON`` bytes, error bodies up to ``MAX_ERROR_BODY``, headers must be
well-formed, and numbers are bounded (``MAX_REPETITION``, ``MAX_SAMPLES``,
finite metrics). A bad answer raises a :class:`~fedsync.errors.RemoteError`
naming the device, which a round records as that device's failure. No error
text carries the token.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..errors import (
    PayloadRejected,
    RemoteBusy,
    RemoteError,
    RemoteTimeout,
    RemoteUnavailable,
    SpecsMismatch,
    TrainingFailed,
)
from ..plugins.hookspecs import RegisterTransport, hookimpl
from ..protocol import MAX_REPETITION, Encoding
from ..wire.codec import Payload, read_exactly
from ..wire.config import encode_config
from ..wire.http import CONFIG_HEADER, MAX_PAYLOAD, REPETITION_HEADER, SPECS_HEADER, ErrorCode
from ..wire.metrics import checked_metrics, checked_samples
from ..wire.replies import ReplyStream
from ..wire.shapes import DeviceInfo, EvaluationAnswer
from ..wire.tokens import checked_token
from ..wire.transfer import Deadline, content_length, read_capped

__all__ = ["Remote", "MAX_REPLY", "MAX_JSON", "MAX_ERROR_BODY", "MAX_SPECS", "size"]

MAX_REPLY = MAX_PAYLOAD
"""Default largest whole result a :class:`Remote` downloads, in bytes (as a device's default limit)."""

MAX_JSON = 1024**2
"""The largest JSON answer (``/info``, an evaluation), in bytes, a :class:`Remote` reads."""

MAX_ERROR_BODY = 64 * 1024
"""Bytes of an error answer read for its message; the rest is never read."""

MAX_SPECS = 4096
"""The longest specs string, in characters, a device may report."""

_BEARER = re.compile(r"(?i)(bearer)(\s+)\S+")


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
    """A device as seen from the coordinator: its URL and one HTTP session.

    Every call has a timeout; connection errors are retried with backoff
    (``retries`` times), other errors are not. Use it as a context manager, or
    call :meth:`close`, to release its connections.

    Args:
        url: the device's base URL, e.g. ``"http://127.0.0.1:8000"`` (or with a
            named base: ``"http://host:8000/model"``).
        timeout: seconds for connecting and for each answer.
        token: sent as ``Authorization: Bearer <token>`` (see ``serve(token=...)``);
            surrounding whitespace is stripped (a token read from a file). ``None``
            (the default) takes ``$FEDSYNC_TOKEN`` if it is set, as ``fedsync serve``
            and ``fedsync info`` do, so one exported variable serves both sides.
        retries: connection attempts retried with backoff.
        verify: TLS verification for ``https://``: ``True``, ``False`` or a CA bundle path.
        cert: mutual TLS: this coordinator's client certificate, as a ``(certfile, keyfile)``
            pair of PEM files (or one file holding both), for devices started with
            ``serve(..., client_ca=...)``. ``fedsync certs coordinator`` makes one.
        max_reply: the largest result, in bytes, downloaded whole (FedData that read
            replies as streams check their size against the model instead).

    Raises:
        ValueError: a URL that is not http(s), a timeout that is not positive, or an
            empty token or one with control or non-ASCII characters (not shown),
            given or from ``$FEDSYNC_TOKEN``.
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
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(
                f"Remote URL must start with http:// or https://, got {url!r}; e.g. Remote('http://127.0.0.1:8000')"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.max_reply = int(max_reply)
        self._token = checked_token(token) if token is not None else _environment_token()
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=0, status=0, other=0, backoff_factor=0.1)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if self._token is not None:
            self.session.headers["Authorization"] = f"Bearer {self._token}"
        # Proxies and the CA bundle from the environment are resolved once here:
        # requests would look them up again on every request (about 0.7 ms each).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.url))
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.trust_env = False
        self.verify = verify
        if cert is not None:
            for path in (cert,) if isinstance(cert, (str, os.PathLike)) else cert:
                if not os.path.isfile(path):
                    raise FileNotFoundError(
                        f"client certificate file {os.fspath(path)!r} not found; make one with `fedsync certs coordinator DIR`"
                    )
            self.session.cert = cert if isinstance(cert, str) else tuple(os.fspath(p) for p in cert)

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    def scrub(self, text: str) -> str:
        """``text`` without the token or any ``Bearer`` credential (for error messages)."""
        if self._token:
            text = text.replace(self._token, "[token]")
        return _BEARER.sub(r"\1\2[redacted]", text)

    # -- calls -----------------------------------------------------------------

    def info(self, *, deadline: Deadline | None = None) -> DeviceInfo:
        """The device's handshake: protocol, specs, last repetition, state, summary.

        ``deadline`` bounds the whole call (default: ``timeout`` seconds).

        Raises:
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: an answer that is not a fedsync handshake: no specs string (of at most ``MAX_SPECS`` characters), or a
                ``repetition`` that is not an integer in ``[0, MAX_REPETITION]``.
        """
        deadline = deadline or Deadline.within(self.timeout)
        info = self._json("GET", "/info", deadline, what="/info")
        if not isinstance(info, dict) or not isinstance(info.get("specs"), str):
            raise RemoteError(self.url, "/info answered no specs; is this a fedsync device?")
        if not 0 < len(info["specs"]) <= MAX_SPECS:
            raise RemoteError(
                self.url, f"/info answered specs of {len(info['specs'])} characters; expected 1 to {MAX_SPECS}"
            )
        repetition = info.get("repetition", 0)
        if isinstance(repetition, bool) or not isinstance(repetition, int) or not 0 <= repetition <= MAX_REPETITION:
            shown = _shown(repetition)
            raise RemoteError(self.url, f"/info answered repetition {shown}; expected an integer in [0, 2**53]")
        return info

    def submit(
        self,
        repetition: int,
        payload: Encoding,
        specs: str,
        *,
        timeout: float | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Hand the device ``payload`` for ``repetition``; returns once it accepted (202).

        ``config``: the round's configuration (:mod:`fedsync.wire.config`), sent in the
        ``X-Fedsync-Config`` header when not empty.

        Raises:
            SpecsMismatch: the device holds other specs (409 ``specs_mismatch``).
            RemoteBusy: the device is still working or serving (409 ``busy``).
            PayloadRejected: the device refused the payload (400, 411 or 413).
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: any other refusal, e.g. 409 ``stale_repetition``.
        """
        body, mimetype = _body(payload)
        response = self._request(
            "POST",
            f"/{repetition}/submit",
            data=body,
            headers=_headers(specs, mimetype, config),
            timeout=timeout or self.timeout,
        )
        # Its JSON says nothing the status did not; read (bounded) so the connection is reused.
        read_capped(response, MAX_JSON, Deadline.within(timeout or self.timeout), self.url, truncate=True)

    def ready(self, repetition: int, wait: float, *, timeout: float | None = None) -> bool:
        """Long-poll up to ``wait`` seconds for the result without downloading it.

        ``True`` once the result is ready, ``False`` if the device is still working.

        Raises:
            TrainingFailed: the device's training raised; the message is the device's.
            RemoteUnavailable: the device cannot be reached (refused, reset, TLS refused).
            RemoteTimeout: no answer within the timeout.
            RemoteError: any other error answer (e.g. 404 ``unknown_repetition``).
        """
        response = self._poll("HEAD", repetition, wait, timeout, check=False)
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 202:
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
        response = self._result_response(repetition, wait, timeout)
        if response is None:
            return None
        if "Content-Length" not in response.headers:  # streamed without a length: read up to max_reply
            body = read_capped(
                response,
                self.max_reply,
                deadline,
                self.url,
                limit="max_reply",
                advice="; raise it with Remote(url, max_reply=...)",
            )
            return self._decoded(body, str(response.headers.get("Content-Type", "")))
        stream = self._stream(repetition, response, timeout, deadline)
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

        response = self._result_response(repetition, wait, timeout)
        return None if response is None else self._stream(repetition, response, timeout, deadline)

    def _stream(
        self, repetition: int, response: requests.Response, timeout: float | None, deadline: Deadline
    ) -> ReplyStream:
        """A result's answer as a :class:`ReplyStream` (which can ask for it again)."""

        def sized(response: requests.Response) -> tuple[requests.Response, int]:
            length = content_length(response.headers.get("Content-Length"))
            if length is None:
                response.close()
                raise RemoteError(
                    self.url,
                    "sent its result without a valid Content-Length (decimal digits); a fedsync device sends one",
                )
            return response, length

        def open_again() -> tuple[requests.Response, int]:
            again = self._result_response(repetition, 0.0, deadline.request_timeout(self.timeout))
            if again is None:
                raise RemoteError(self.url, f"no longer has the result of repetition {repetition}")
            return sized(again)

        stream = ReplyStream(self.url, sized(response), open_again, deadline)
        stream.content_type = str(response.headers.get("Content-Type", ""))
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
                    f"announced a result of {len(stream)} bytes, over max_reply ({self.max_reply}); raise it with Remote(url, max_reply=...)",
                )
            if as_view and not with_text:
                return stream.read_all()
            body = read_exactly(stream.readinto, len(stream))
        finally:
            stream.close()
        return self._decoded(body, stream.content_type)

    def _decoded(self, body: bytes | bytearray, content_type: str) -> Encoding:
        """``str`` for a ``text/plain`` result, else ``bytes``."""
        if content_type.startswith("text/plain"):
            try:
                return body.decode("utf-8")
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
        body, mimetype = _body(payload)
        deadline = deadline or Deadline.within(timeout or self.timeout)
        answer = self._json(
            "POST",
            f"/{repetition}/evaluate",
            deadline,
            what="the evaluation",
            data=body,
            headers=_headers(specs, mimetype, config),
            timeout=timeout or self.timeout,
        )
        try:
            if not isinstance(answer, dict):
                raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
            if not isinstance(answer.get("samples"), int):  # JSON carries a count as a number, not text
                raise ValueError(f"samples must be a whole number, got {_shown(answer.get('samples'))}")
            samples = checked_samples(answer.get("samples"), "samples")
            metrics = checked_metrics(answer.get("metrics"), "metrics")
        except ValueError as exc:
            raise RemoteError(
                self.url, f"evaluation answered no valid samples and metrics: {self.scrub(str(exc))}"
            ) from None
        return {"samples": samples, "metrics": metrics}

    def close(self) -> None:
        """Release the session's connections."""
        self.session.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def _json(self, method: str, path: str, deadline: Deadline, *, what: str, **kwargs: Any) -> Any:
        """A JSON answer of at most ``MAX_JSON`` bytes, read before ``deadline``."""
        kwargs.setdefault("timeout", deadline.request_timeout(self.timeout))
        response = self._request(method, path, stream=True, **kwargs)
        if response.status_code != 200:
            response.close()
            raise RemoteError(self.url, f"{what} answered HTTP {response.status_code}; expected 200")
        body = read_capped(response, MAX_JSON, deadline, self.url)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            raise RemoteError(self.url, f"{what} did not answer JSON: {self.scrub(repr(body[:200]))}") from None

    def _result_response(self, repetition: int, wait: float, timeout: float | None) -> requests.Response | None:
        """``GET {rep}/result?wait=``, its body unread; ``None`` while the device is still working."""
        response = self._poll("GET", repetition, wait, timeout, stream=True)
        if response.status_code == 202:
            response.close()
            return None
        if response.status_code != 200:
            response.close()
            raise RemoteError(
                self.url, f"answered HTTP {response.status_code} to a result request; expected 200 or 202"
            )
        answered = response.headers.get(REPETITION_HEADER)
        if answered is not None and answered != str(repetition):
            response.close()
            raise RemoteError(self.url, f"answered repetition {_shown(answered)} instead of {repetition}")
        return response

    def _poll(
        self, method: str, repetition: int, wait: float, timeout: float | None, **kwargs: Any
    ) -> requests.Response:
        """A long-poll of ``{rep}/result``: the read timeout covers the wait."""
        read_timeout = timeout if timeout is not None else wait + self.timeout
        return self._request(
            method,
            f"/{repetition}/result",
            params={"wait": f"{wait:.3f}"},
            timeout=(min(self.timeout, read_timeout), read_timeout),
            **kwargs,
        )

    def _request(self, method: str, path: str, check: bool = True, **kwargs: Any) -> requests.Response:
        # Bodies are read here, bounded, never by requests (which reads them whole).
        kwargs.setdefault("stream", True)
        kwargs.setdefault("allow_redirects", False)  # a device has no business sending the token elsewhere
        try:
            response = self.session.request(method, self.url + path, verify=self.verify, **kwargs)
        except requests.exceptions.SSLError as exc:
            detail = self._short(exc)
            _raise_if_refused_certificate(self.url, detail)
            if "EOF" in detail or "reset" in detail.lower():  # a device refusing a client certificate may just hang up
                hint = (
                    "on this coordinator's certificate (is it signed by the CA the device was given as client_ca?)"
                    if self.session.cert
                    else "(if it requires a client certificate, pass cert=(certfile, keyfile) signed by its CA)"
                )
                raise RemoteUnavailable(
                    self.url, f"TLS handshake refused: the device closed the connection {hint}: {detail}"
                ) from None
            if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail.lower():
                raise RemoteUnavailable(
                    self.url,
                    f"TLS certificate not trusted (pass verify=CA_BUNDLE, the device's certificate or its CA): {detail}",
                ) from None
            raise RemoteUnavailable(self.url, f"TLS handshake failed: {detail}") from None
        except requests.exceptions.ConnectTimeout as exc:
            raise RemoteTimeout(self.url, f"timed out connecting ({self._short(exc)})") from None
        except requests.exceptions.Timeout as exc:
            raise RemoteTimeout(self.url, f"timed out: no answer within the timeout ({self._short(exc)})") from None
        except requests.exceptions.ConnectionError as exc:
            _raise_if_refused_certificate(self.url, self._short(exc))
            if _timed_out(exc):  # a read timeout that exhausted the retries arrives as a ConnectionError
                raise RemoteTimeout(self.url, f"timed out: no answer within the timeout ({self._short(exc)})") from None
            if _malformed(exc):  # it connected and answered, but not HTTP a client can read
                raise RemoteError(self.url, f"answered malformed HTTP ({self._short(exc)})") from None
            raise RemoteUnavailable(self.url, f"cannot connect: is the device running? ({self._short(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise RemoteError(self.url, self._short(exc)) from None
        if check and response.status_code >= 400:
            with response:
                self._raise_for(response)
        return response

    def _raise_for(self, response: requests.Response) -> None:
        status = response.status_code
        try:
            # At most MAX_ERROR_BODY bytes, read within the timeout: the message is for people.
            text = read_capped(response, MAX_ERROR_BODY, Deadline.within(self.timeout), self.url, truncate=True)
            detail = json.loads(text)
            code, message = str(detail["error"])[:100], str(detail["message"])[:2000]
        except (ValueError, KeyError, TypeError, RecursionError):
            code, message = "http_error", f"HTTP {status}: {text[:200]!r}"
        except RemoteError as exc:
            code, message = "http_error", f"HTTP {status} (its message could not be read: {exc.reason})"
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
            error: Exception = PayloadRejected(
                f"{self.url}: device rejected the payload ({status} {code}): {message}", url=self.url
            )
        else:
            error = RemoteError(self.url, f"HTTP {status} {code}: {message}")
        # The refusal's JSON object (at most MAX_ERROR_BODY bytes), for callers that read more than the
        # message, e.g. secure aggregation's "senders" (fedsync.secagg.coordinator); unchecked: check before use.
        error.detail = detail if code != "http_error" and isinstance(detail, dict) else None  # type: ignore[attr-defined]
        raise error

    def _short(self, exc: BaseException) -> str:
        text = self.scrub(str(exc))
        return text if len(text) < 300 else text[:300] + "..."


def _body(payload: Encoding) -> tuple[Any, str]:
    if isinstance(payload, str):
        return payload.encode("utf-8"), "text/plain; charset=utf-8"
    return payload, "application/octet-stream"


def _headers(specs: str, mimetype: str, config: Mapping[str, Any] | None) -> dict[str, str]:
    headers = {SPECS_HEADER: specs, "Content-Type": mimetype}
    if config:
        headers[CONFIG_HEADER] = encode_config(config)
    return headers


def _timed_out(exc: BaseException) -> bool:
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # refused: a ConnectTimeoutError by inheritance only
        return False
    return isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError))


def _malformed(exc: BaseException) -> bool:
    """A connection error that is a malformed answer (a status line or headers http.client refused)."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the ProtocolError
    if not isinstance(reason, urllib3.exceptions.ProtocolError) or len(reason.args) < 2:
        return False
    cause = reason.args[1]
    # RemoteDisconnected and IncompleteRead are a device that went away, not bad HTTP.
    return isinstance(cause, http.client.HTTPException) and not isinstance(
        cause, (ConnectionError, http.client.IncompleteRead)
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def size(payload: Encoding) -> int:
    """A payload's size in bytes, as sent."""
    if isinstance(payload, str):
        return len(payload.encode("utf-8"))
    if isinstance(payload, (Payload, ReplyStream)):
        return len(payload)
    return memoryview(payload).nbytes


def _raise_if_refused_certificate(url: str, detail: str) -> None:
    """A device requiring client certificates (mutual TLS) refused ours, or got none: say which."""
    lowered = detail.lower()
    if "certificate required" in lowered or "certificate_required" in lowered:
        raise RemoteUnavailable(
            url,
            f"TLS handshake refused: the device requires a client certificate (pass cert=(certfile, keyfile) signed by its CA): {detail}",
        )
    if any(
        alert in lowered
        for alert in (
            "unknown ca",
            "unknown_ca",
            "bad certificate",
            "bad_certificate",
            "certificate unknown",
            "certificate_unknown",
        )
    ):
        raise RemoteUnavailable(
            url,
            f"TLS handshake refused: the device does not trust this coordinator's certificate (is it signed by the CA the device was given as client_ca?): {detail}",
        )


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    """``http`` and ``https``: fedsync's own transport registers like a third party's."""
    register("http", Remote)
    register("https", Remote)
