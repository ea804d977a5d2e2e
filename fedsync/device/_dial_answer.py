"""One dialed-in job from start to end: checked, run through the device's app, its answer uploaded and resumed.

The upload follows the listener's offsets (``Upload-Length``/``Upload-Offset``, the semantics of the IETF
resumable-upload draft with POST): a broken upload asks ``HEAD .../answer`` where the listener stands and
sends from there, re-running the local request for a large answer (a result's GET is idempotent: the
reply stays until the next submission) and skipping the bytes already in, or resending from memory a
small one. The answer streams from the app's WSGI iterable: never a second whole copy of a model.

Internal: its names may change without notice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._util.json import shown
from ..wire.http import ErrorCode
from ._dial_job import (
    BROKEN,
    CHUNK,
    IO_TIMEOUT,
    TRANSFER_TRIES,
    Answer,
    Connection,
    JobBody,
    _reason,
    call_app,
    environ_for,
    unexpected,
)
from ._dial_wire import (
    HEADERS_HEADER,
    STATUS_HEADER,
    UPLOAD_LENGTH,
    UPLOAD_OFFSET,
    BadJob,
    DialRefused,
    Job,
    ListenerError,
    StaleSession,
    check_job,
    digits,
)

__all__ = ["run_job", "error_answer"]

logger = logging.getLogger("fedsync.server.dial")

App = Callable[[dict[str, Any], Any], Iterable[bytes]]


def run_job(
    connection: Connection,
    app: App,
    job: Job,
    *,
    max_length: int,
    backoff: Callable[[int], float],
    stopping: threading.Event,
) -> bool:
    """Check ``job``, run it through ``app`` and upload the answer; True once the listener has it whole.

    A bad job is answered with the device protocol's JSON error (400, or 413 for a body above
    ``max_length``); an app that raises is answered ``500 internal_error``; a listener or a network
    that fails past :data:`TRANSFER_TRIES` gives the job up (the coordinator's deadline then fails it).

    Raises:
        DialRefused: the listener answered 401 or 403 (the dialer stops).
        StaleSession: the listener no longer knows this session (the dialer registers again).
    """
    try:
        check_job(job, max_length)
    except BadJob as exc:
        logger.warning("%s sent a bad job %s: %s; answered %d %s", connection.url, job.id, exc, exc.status, exc.code)
        return upload(connection, job, error_answer(exc.status, exc.code, str(exc)), None, backoff, stopping)
    body = JobBody(connection, job, backoff, stopping)
    try:
        try:
            answer = call_app(app, environ_for(job, body, connection.url))
        except (DialRefused, StaleSession):
            raise
        except OSError as exc:  # the body's download gave up: what a device says of a body that ended early
            if not stopping.is_set():
                logger.warning("job %s (%s %s): %s", job.id, job.method, shown(job.target, 80), exc)
            answer = error_answer(400, ErrorCode.TRUNCATED, f"the device could not download the request body: {exc}")
        except Exception as exc:
            logger.exception("job %s (%s %s): the device app raised", job.id, job.method, shown(job.target, 80))
            answer = error_answer(500, ErrorCode.INTERNAL_ERROR, f"the device failed: {type(exc).__name__}: {exc}")
    finally:
        body.close()
    if body.fatal is not None:  # refused or stale while downloading: the dialer stops or registers again
        raise body.fatal
    rerun = None
    if job.method in ("GET", "HEAD"):
        # Idempotent: a broken upload can run the same request again and skip what the listener holds.
        def rerun() -> Answer:
            return call_app(app, environ_for(job, _NoBody(), connection.url))

    return upload(connection, job, answer, rerun, backoff, stopping)


def error_answer(status: int, code: str, message: str) -> Answer:
    """The JSON error a device answers (``{"error": code, "message": ...}``), held in memory."""
    body = json.dumps({"error": code, "message": message}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    return Answer(status, headers, len(body), body, iter(()), lambda: None)


def upload(
    connection: Connection,
    job: Job,
    answer: Answer,
    rerun: Callable[[], Answer] | None,
    backoff: Callable[[int], float],
    stopping: threading.Event,
) -> bool:
    """POST ``answer`` to ``.../jobs/{job}/answer``, resuming from the listener's offset when it breaks.

    True once the listener answered 204 (it holds all the bytes). Closes ``answer`` (and any re-run).

    Raises:
        DialRefused, StaleSession: as :func:`run_job`.
    """
    path = f"/jobs/{job.id}/answer"
    head = {
        STATUS_HEADER: str(answer.status),
        HEADERS_HEADER: json.dumps(answer.headers, separators=(",", ":")),
        UPLOAD_LENGTH: str(answer.length),
        "Content-Type": "application/octet-stream",
    }
    current, offset, failures = answer, 0, 0
    try:
        while True:
            if stopping.is_set():
                logger.info("job %s: the dialer is closing; its answer was not sent whole", job.id)
                return False
            try:
                data = _UploadBody(current, offset) if answer.length > offset else b""
                response = connection.request(
                    "POST", path, headers={**head, UPLOAD_OFFSET: str(offset)}, data=data, connect_timeout=IO_TIMEOUT
                )
                if response.status_code == 204:
                    response.close()
                    return True
                code = getattr(response, "_fedsync_error", ("", ""))[0]
                if response.status_code == 409 and code == ErrorCode.OFFSET_MISMATCH:
                    held = digits(response.headers.get(UPLOAD_OFFSET), "the listener's Upload-Offset", answer.length)
                    logger.info("job %s: the listener holds %d bytes of the answer, not %d", job.id, held, offset)
                    failures += 1
                else:
                    error = unexpected(response, f"uploading the answer of job {job.id}")
                    if response.status_code in (404, 409):  # unknown_job, answer_changed: no try can succeed
                        logger.warning("%s; the answer is given up", error)
                        return False
                    raise error
            except (DialRefused, StaleSession):
                raise
            except BROKEN as exc:
                if stopping.is_set():  # close() cut the upload: nothing alarming to report
                    logger.info("job %s: the dialer is closing; its answer was not sent whole", job.id)
                    return False
                failures += 1
                if failures >= TRANSFER_TRIES:
                    logger.warning(
                        "job %s: the upload of its answer failed %d times (%s); given up",
                        job.id,
                        failures,
                        _reason(exc),
                    )
                    return False
                delay = backoff(failures)
                logger.warning(
                    "the upload of job %s broke (%s); asking where to resume in %.1f s", job.id, _reason(exc), delay
                )
                stopping.wait(delay)
                try:
                    held = _held_offset(connection, path, answer.length)
                except (DialRefused, StaleSession):
                    raise
                except BROKEN as again:
                    logger.warning("job %s: cannot ask where to resume the upload (%s)", job.id, _reason(again))
                    continue
            if held > offset:
                failures = 0
            offset = held
            if offset >= answer.length:
                return True
            resumed = _resumed(answer, rerun, offset, job)
            if resumed is None:
                return False
            if current is not answer:
                current.close()
            current = resumed
            logger.info("resuming the upload of job %s at byte %d of %d", job.id, offset, answer.length)
    finally:
        current.close()
        if current is not answer:
            answer.close()


def _held_offset(connection: Connection, path: str, length: int) -> int:
    """How many bytes of the answer the listener holds (``HEAD .../answer``; 404: none yet)."""
    response = connection.request("HEAD", path)
    response.close()
    if response.status_code == 404:
        return 0
    if response.status_code != 204:
        raise ListenerError(f"HEAD of the answer: {response.status_code}, expected 204 with {UPLOAD_OFFSET}")
    return digits(response.headers.get(UPLOAD_OFFSET), "the listener's Upload-Offset", length)


def _resumed(first: Answer, rerun: Callable[[], Answer] | None, offset: int, job: Job) -> Answer | None:
    """The answer to send from ``offset``: the same held bytes, or the local request run again (None: cannot)."""
    if first.held is not None:
        return first
    if rerun is None:
        logger.warning(
            "job %s: a %d-byte answer to a %s cannot be sent again; given up", job.id, first.length, job.method
        )
        return None
    first.close()  # the first run's body was read in part: let the app release it before running again
    again = rerun()
    if (again.status, again.headers, again.length) != (first.status, first.headers, first.length):
        again.close()
        logger.warning(
            "job %s: running it again gave another answer (%d, %d bytes); given up", job.id, again.status, again.length
        )
        return None
    return again


class _UploadBody:
    """The bytes of ``answer`` from ``skip`` on, as a requests body of known length (so no chunked encoding).

    A body that turns out longer or shorter than its length raises: the connection is cut, never padded.
    """

    def __init__(self, answer: Answer, skip: int) -> None:
        self._answer = answer
        self._skip = skip
        self._length = answer.length - skip

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[memoryview]:
        pieces: Iterable[bytes] = (self._answer.held,) if self._answer.held is not None else self._answer.pieces
        skip, sent = self._skip, 0
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if skip:
                if len(view) <= skip:
                    skip -= len(view)
                    continue
                view, skip = view[skip:], 0
            if sent + len(view) > self._length:
                raise RuntimeError(f"the device's answer is longer than its {self._answer.length} announced bytes")
            for start in range(0, len(view), CHUNK):
                yield view[start : start + CHUNK]
            sent += len(view)
        if sent < self._length:
            raise RuntimeError(f"the device's answer ended {self._length - sent} bytes short of its length")


class _NoBody:
    """``wsgi.input`` of a re-run GET or HEAD: no body."""

    def read(self, size: int = -1) -> bytes:
        return b""

    def readinto(self, buffer: Any) -> int:
        return 0

    def readline(self, size: int = -1) -> bytes:
        return b""

    def __iter__(self) -> Iterator[bytes]:
        return iter(())
