"""A device that dials out: outgoing HTTP(S) only, to a coordinator's listener (issue #20, ``docs/dial-out.md``).

For devices behind NAT or a firewall that allows only outgoing connections. The dialer registers its
name and specs, long-polls ``next`` for jobs (one poller thread), and runs each job (up to
:data:`MAX_JOBS` at once, a thread each) through the device's own :class:`~fedsync.device.app.DeviceApp`
in-process: a job is one request of the coordinator's ordinary device protocol, tunnelled. It
reconnects by itself, forever until closed, with backoff computed by ``urllib3.util.Retry``; a
refusal (401, 403) stops it with an error that says what to change.

:func:`fedsync.serve` with ``connect=URL`` returns a :class:`RunningDialer` (``block=False``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from typing import Any

from urllib3.util.retry import RequestHistory, Retry

from .._util.checks import is_number
from .._util.json import shown
from .._version import PROTOCOL_VERSION, __version__
from ..wire.tokens import checked_token
from ._dial_answer import run_job
from ._dial_job import BROKEN, MAX_JOBS, Connection, _reason, read_bounded, unexpected
from ._dial_wire import (
    MAX_POLL_WAIT,
    DialRefused,
    ListenerError,
    StaleSession,
    checked_name,
    parse_job,
    parse_registration,
)
from .app import DeviceApp

__all__ = ["RunningDialer", "DialRefused", "MAX_JOBS", "POLL_MARGIN"]

logger = logging.getLogger("fedsync.server.dial")

POLL_MARGIN = 15.0
"""Seconds a ``next`` long-poll may run past its ``wait`` before the dialer takes the connection for lost."""


class RunningDialer:
    """A device dialing a coordinator's listener, in background threads; a context manager.

    Args:
        app: the device (``DeviceApp(data)``, no token: the listener authenticated the coordinator's side).
        url: the listener's ``http://`` or ``https://`` URL, e.g. ``https://coordinator:9000``.
        name: this device's name on the listener's allow-list (1-64 of ``[A-Za-z0-9._-]``).
        token: this device's token on the listener (sent as ``Authorization: Bearer``).
        verify: TLS: ``True`` (the system's CAs), a CA bundle path (PEM), or ``False`` (not verified).
        cert: mutual TLS: ``(certfile, keyfile)`` or one PEM file holding both.
        backoff_factor, backoff_max, backoff_jitter: reconnection waits, in seconds, as
            ``urllib3.util.Retry`` computes them (``factor * 2**n``, at most ``backoff_max``, plus up to
            ``backoff_jitter`` at random so many devices do not return at the same instant).
        poll_wait: seconds a ``next`` long-poll waits for a job (the listener's suggestion wins; at most 60).

    ``error`` is the :class:`DialRefused` that stopped it, or None. ``connected`` is True while registered.

    Raises:
        ValueError: a bad URL, name, token, ``cert`` or backoff (each message gives an example).
    """

    def __init__(
        self,
        app: DeviceApp,
        url: str,
        name: str,
        token: str,
        *,
        verify: bool | str | os.PathLike = True,
        cert: tuple[str, str] | str | None = None,
        backoff_factor: float = 0.5,
        backoff_max: float = 30.0,
        backoff_jitter: float = 1.0,
        poll_wait: float = 30.0,
    ) -> None:
        self.app = app
        self.url = _checked_url(url)
        self.name = checked_name(name)
        checked = checked_token(token)
        if checked is None:
            raise ValueError(
                f"a dialing device needs its token: pass token= (the one the coordinator's listener holds for {name!r})"
            )
        for what, value in (
            ("backoff_factor", backoff_factor),
            ("backoff_max", backoff_max),
            ("backoff_jitter", backoff_jitter),
        ):
            if not is_number(value) or not 0 <= value <= 3600:
                raise ValueError(f"{what} must be a number of seconds in [0, 3600], got {shown(value)}")
        if (
            isinstance(poll_wait, bool)
            or not isinstance(poll_wait, (int, float))
            or not 1 <= poll_wait <= MAX_POLL_WAIT
        ):
            raise ValueError(f"poll_wait must be a number of seconds in [1, {MAX_POLL_WAIT:g}], got {shown(poll_wait)}")
        self.poll_wait = float(poll_wait)
        self._retry = Retry(
            total=None, backoff_factor=backoff_factor, backoff_max=backoff_max, backoff_jitter=backoff_jitter
        )
        self.connection = Connection(self.url, self.name, checked, _checked_verify(verify), _checked_cert(cert))
        self.error: DialRefused | None = None
        self.registrations = 0
        self.jobs = 0
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_JOBS)
        self._workers: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._poller = threading.Thread(target=self._run, name=f"fedsync-dial-{self.name}", daemon=True)
        self._poller.start()

    @property
    def connected(self) -> bool:
        """Whether the device holds a registration the listener accepted (and has not lost the coordinator since)."""
        return self.connection.session is not None and not self._stopping.is_set()

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (>= 1), as ``urllib3.util.Retry`` computes it."""
        # Retry waits nothing after its first error; one more entry makes the first wait backoff_factor * 2.
        history = tuple(RequestHistory("GET", self.url, None, None, None) for _ in range(failures + 1))
        return self._retry.new(history=history).get_backoff_time()

    def join(self, timeout: float | None = None) -> None:
        """Block until the dialer stops (closed, or refused: see ``error``), or ``timeout`` seconds pass."""
        self._poller.join(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling, give running jobs up to ``timeout`` s to finish, then cut every connection left."""
        self._stopping.set()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)
        self.connection.abort()  # the long-poll in flight, and any job past its time
        self._poller.join(timeout)
        self.connection.close()

    def __enter__(self) -> RunningDialer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the poller ---------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        fresh = False  # registered and not yet polled: a stale session now is the listener's fault, not a restart
        while not self._stopping.is_set():
            try:
                if self.connection.session is None:
                    self._register()
                    fresh = True
                    if failures:
                        logger.info("reconnected to %s after %d tries", self.url, failures)
                        failures = 0
                if not self._slots.acquire(timeout=1.0):
                    continue
                try:
                    job = self._next()
                except BaseException:
                    self._slots.release()
                    raise
                fresh = False
                if failures:
                    logger.info("reconnected to %s after %d tries", self.url, failures)
                    failures = 0
                if job is None or self._stopping.is_set():
                    self._slots.release()
                    continue
                self._start(job)
            except StaleSession as exc:
                self.connection.session = None
                if fresh:  # refused the session it just gave: back off rather than register in a tight loop
                    failures += 1
                    self._lost(f"it refused the session it just gave: {exc}", failures)
                else:
                    logger.info("%s no longer knows this device's session (restarted?); registering again", self.url)
            except DialRefused as exc:
                self.error = exc
                self.connection.session = None
                logger.error("%s; the dialer stops", exc)
                self._stopping.set()
            except _Unusable as exc:  # cannot be answered without a usable job id: logged, then poll again
                failures += 1
                delay = self.backoff(failures)
                logger.warning(
                    "ignored a job from %s that cannot be answered (%s); polling again in %.1f s", self.url, exc, delay
                )
                self._stopping.wait(delay)
            except BROKEN as exc:
                failures += 1
                self._lost(_reason(exc), failures)
            except Exception:  # a bug of this module's: logged, and the dialer goes on
                if self._stopping.is_set():
                    break
                failures += 1
                logger.exception("the dialer's poller failed")
                self._stopping.wait(self.backoff(failures))

    def _lost(self, reason: str, failures: int) -> None:
        if self._stopping.is_set():
            return  # close() cut the connection: not a loss of the coordinator, nothing to report
        delay = self.backoff(failures)
        logger.warning("lost the coordinator at %s (%s); retrying in %.1f s", self.url, reason, delay)
        self._stopping.wait(delay)

    def _register(self) -> None:
        bases = list(self.app.devices)
        body = {
            "protocol": PROTOCOL_VERSION,
            "fedsync": __version__,
            "bases": [base[1:] for base in bases],
            "specs": {base[1:]: self.app.devices[base].info()["specs"] for base in bases},
        }
        response = self.connection.request(
            "POST",
            "/register",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            session=False,
        )
        if response.status_code != 200:
            raise unexpected(response, "registering")
        session, wait = parse_registration(read_bounded(response))
        if wait is not None:
            self.poll_wait = min(max(wait, 1.0), MAX_POLL_WAIT)
        self.connection.session = session
        self.registrations += 1
        logger.info("registered with %s as %s", self.url, self.name)

    def _next(self) -> Any:
        wait = self.poll_wait
        response = self.connection.request("GET", f"/next?wait={wait:g}", read_timeout=wait + POLL_MARGIN)
        if response.status_code == 204:
            response.close()
            return None
        if response.status_code != 200:
            raise unexpected(response, "polling for a job")
        raw = read_bounded(response)
        try:
            return parse_job(raw)
        except ListenerError as exc:
            raise _Unusable(str(exc)) from None

    def _start(self, job: Any) -> None:
        self.jobs += 1
        worker = threading.Thread(target=self._work, args=(job,), name=f"fedsync-dial-job-{job.id[:8]}", daemon=True)
        with self._lock:
            self._workers.add(worker)
        worker.start()

    def _work(self, job: Any) -> None:
        try:
            run_job(
                self.connection,
                self.app,
                job,
                max_length=self.app.max_content_length,
                backoff=self.backoff,
                stopping=self._stopping,
            )
        except StaleSession:
            if not self._stopping.is_set():
                logger.warning("job %s was lost: %s no longer knows this session", job.id, self.url)
        except DialRefused as exc:
            if self.error is None:
                self.error = exc
                logger.error("%s; the dialer stops", exc)
            self._stopping.set()
        except Exception:  # a job never takes the dialer down
            logger.exception("job %s failed", job.id)
        finally:
            self._slots.release()
            with self._lock:
                self._workers.discard(threading.current_thread())


class _Unusable(ListenerError):
    """A ``next`` answer that is not a job this device can answer (not JSON, no job id of 32 hex characters)."""


def _checked_url(url: Any) -> str:
    if not isinstance(url, str):
        raise ValueError(f"connect must be a URL string, got {type(url).__name__}; e.g. 'https://coordinator:9000'")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise ValueError(
            f"connect URL {shown(url)} is not http(s)://host[:port] (no user, query or fragment); "
            "e.g. connect='https://coordinator:9000'"
        )
    try:
        parts.port  # noqa: B018  # raises for a port that is not a number in range
    except ValueError:
        raise ValueError(f"connect URL {shown(url)} has a bad port; e.g. 'https://coordinator:9000'") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _checked_verify(verify: Any) -> bool | str:
    if isinstance(verify, bool):
        return verify
    if isinstance(verify, (str, os.PathLike)):
        path = os.fspath(verify)
        if not os.path.isfile(path):
            raise ValueError(f"verify={path!r}: no such CA file; give the coordinator's CA certificate (PEM)")
        return path
    raise ValueError(f"verify must be True, False or a CA file path, got {type(verify).__name__}")


def _checked_cert(cert: Any) -> tuple[str, str] | str | None:
    if cert is None:
        return None
    files = (cert,) if isinstance(cert, (str, os.PathLike)) else tuple(cert) if isinstance(cert, (tuple, list)) else ()
    if len(files) not in (1, 2) or not all(isinstance(f, (str, os.PathLike)) for f in files):
        raise ValueError(
            "cert must be (certfile, keyfile) or one PEM file holding both, e.g. cert=('site-a.pem', 'site-a.key')"
        )
    paths = tuple(os.fspath(f) for f in files)
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(
                f"cert file not found: {path!r}; make one with: fedsync certs device DIR --host NAME "
                "(its identity must be the device's name)"
            )
    return paths[0] if len(paths) == 1 else (paths[0], paths[1])
