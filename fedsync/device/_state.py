"""The device-side state of one FedData: its jobs, and the replies it serves as snapshots.

A result is served from the memory ``serialize`` returned: for array FedData,
views of the live model (no copy: a round's common case copies nothing). Two
rules keep every reply an exact snapshot of what repetition ``r`` produced
(``docs/protocol.md``, "Replies are snapshots"):

- While a download of the current result reads live memory, nothing may write
  the model: a submission or an evaluation is refused with ``409 busy``.
- An evaluation (which writes the model) first swaps the held result for an
  owned copy, if it still views live memory; a later download, or the same
  reply read again, then serves exactly the trained bytes.

One lock (``Device.state_lock``) orders these decisions; nothing waits on another
request's progress while holding it. How a reply's bytes reach the connection is
:mod:`fedsync.device._reply`'s business, not this module's.

Internal: the device side of :func:`fedsync.serve`; its names may change without notice.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util.checks import is_int
from .._version import PROTOCOL_VERSION, __version__
from ..protocol import MAX_REPETITION, Encoding, FedData
from ..secagg.device import session_for_submit
from ..secagg.device import supported as secagg_supported
from ..wire.config import Config, takes_extra, takes_keyword
from ..wire.http import ApiError, ErrorCode
from ..wire.shapes import DeviceInfo
from ._kept import save_state
from ._reply import download, once, owned_copy, reply_length, response_body

__all__ = ["Device", "Job", "PartialUpload", "HeadedError", "checked_repetition", "PARTIAL_KEEP"]

logger = logging.getLogger("fedsync.server")


def checked_repetition(rep: int) -> int:
    """``rep`` if at most :data:`MAX_REPETITION`, else a ``400 bad_repetition`` ApiError."""
    if rep > MAX_REPETITION:
        raise ApiError(
            400, ErrorCode.BAD_REPETITION, f"repetition {rep} is above the largest accepted, 2**53 ({MAX_REPETITION}); "
            "repetitions count rounds from 1",
        )  # fmt: skip
    return rep


PARTIAL_KEEP = 300.0
"""Seconds a broken submission's bytes are kept for its resumption, after its last byte arrived.

A coordinator resumes at once (``HEAD`` then ``POST`` within its submission's timeout, 30 s by
default); the device does not know the round's deadline, so it keeps the bytes a few such timeouts."""


class HeadedError(ApiError):
    """An :class:`ApiError` answered with extra headers (``Upload-Offset``, ``Content-Range``)."""

    def __init__(self, status: int, error: ErrorCode, message: str, headers: dict[str, str]) -> None:
        super().__init__(status, error, message)
        self.extra = headers

    def get_response(self, environ: Any = None, scope: Any = None) -> Any:
        response = super().get_response(environ, scope)
        response.headers.update(self.extra)
        return response


@dataclass
class PartialUpload:
    """A submission's body as far as it arrived: what a resumed ``POST`` continues (docs/protocol.md).

    ``buffer`` holds ``length`` bytes, the first ``received`` of them filled; ``sent`` the first try's
    headers (specs, config, content type) that a resumption must repeat; ``reading``: a request is
    filling it now; ``at``: ``time.monotonic()`` of its last byte.
    """

    repetition: int
    length: int
    sent: tuple[str | None, ...]
    buffer: Any
    received: int = 0
    reading: bool = True
    at: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        return not self.reading and now - self.at > PARTIAL_KEEP


def _busy_downloading() -> ApiError:
    return ApiError(409, ErrorCode.BUSY, "a result is being downloaded; try again when it is read")


@dataclass
class Job:
    """One repetition a device is working on, or has finished.

    ``owned``: ``result`` holds its own memory (immutable, or a copy), so
    writing the model cannot change it; otherwise it views the live model.
    """

    repetition: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Encoding | None = None
    owned: bool = False
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None
    secagg: Any = None
    """The :class:`fedsync.secagg.device.Session` that masks this job's result, if the round runs secure aggregation."""
    deadline: float | None = None
    """Seconds left in the coordinator's round when the submission arrived (``X-Fedsync-Deadline``), if it said."""


class Device:
    """The device-side state of one FedData: its last repetition and current job.

    ``state_lock`` guards ``job``, ``last_repetition``, ``downloads`` (downloads
    in flight that read live model memory) and ``secagg``. ``busy`` is held by
    whatever writes the model (a training job or an evaluation); ``receiving`` by
    the one request whose body is being read, so a device holds at most one
    incoming payload per FedData, whatever peers send at once.

    ``executor``: where training jobs run; ``None`` (the default), a thread each. A simulation's
    devices share a bounded pool (:class:`fedsync.transports.local.TrainingPool`), set here
    before the first submission. A job its executor refuses (shut down) fails with
    ``RuntimeError: the simulation's training pool is closed``.
    """

    def __init__(self, fed: FedData, *, executor: Executor | None = None) -> None:
        if not isinstance(fed, FedData):
            raise TypeError(
                f"serve() takes a FedData or a dict of them, got {type(fed).__name__}; "
                "e.g. serve(FedKeras(model, train)) or serve({'model': fed})"
            )
        self.fed = fed
        self.executor = executor
        # Guards the state below (repetition, job, downloads, the secagg session). Reentrant:
        # a download dropped unfinished releases its count from __del__, which the garbage
        # collector may run in a thread that already holds the lock.
        self.state_lock = threading.RLock()
        self.last_repetition = 0
        self.rounds_served = 0
        self.job: Job | None = None
        self.secagg: Any = None  # the current secure-aggregation session (fedsync.secagg.device)
        self.secagg_required = False  # serve(secure_aggregation="required"): refuse plain rounds
        self.secagg_identity: Any = None  # serve(peer_ca=...): signs and checks secure aggregation's views
        self.downloads = 0
        # The one submission whose body is arriving or broke part-way (state_lock): it is this
        # FedData's one incoming payload, replaced by the next fresh submission, gone after PARTIAL_KEEP s.
        self.partial: PartialUpload | None = None
        self.busy = threading.Lock()  # held by a training job or an evaluation
        self.receiving = threading.Lock()  # held while one payload is read and handed over
        self._spare: np.ndarray | None = None  # the last payload's buffer, for the next one
        self.state_path: Path | None = None  # serve(state_dir=...): where the device state is saved after each round
        self._spare_lock = threading.Lock()
        # receive/evaluate get the round's config only if they take a third argument:
        # the seed's receive(encoding, repetition) keeps working as written.
        self._receive_config = takes_extra(fed.receive, 2)
        self._evaluate_config = takes_extra(fed.evaluate, 2)
        # An aggregator's receive/evaluate also take the parent's deadline (X-Fedsync-Deadline), by keyword.
        self._deadlines = all(takes_keyword(f, "deadline") for f in (fed.receive, fed.evaluate))

    def payload_buffer(self, length: int) -> np.ndarray | None:
        """The last training payload's buffer again, if it fits and nothing holds it any more.

        A fresh model-sized buffer costs tens of milliseconds of page faults every
        round (benchmarks/README.md). Only a buffer no one references is reused:
        a FedData that kept a view of its payload keeps it intact.
        """
        with self._spare_lock:
            spare, self._spare = self._spare, None
        # 2: the local name and getrefcount's own argument.
        if spare is not None and spare.nbytes == length and sys.getrefcount(spare) == 2:
            return spare
        return None

    @property
    def state(self) -> str:
        job = self.job
        if job is None:
            return "idle"
        if not job.done.is_set():
            return "training"
        return "failed" if job.error is not None else "idle"

    def info(self) -> DeviceInfo:
        session = self.secagg
        # The highest repetition this device refuses to start again: a secure round's keys phase
        # counts (its setup may have failed before submit), so a restarted coordinator goes above it.
        refused = max(self.last_repetition, session.rep if session is not None else 0)
        next_rep = refused + 1
        job = self.job
        return {
            "protocol": PROTOCOL_VERSION,
            "fedsync": __version__,
            "type": type(self.fed).__name__,
            "specs": self.fed.specs(next_rep),
            "repetition": refused,
            "state": self.state,
            "rounds_served": self.rounds_served,
            "last_error": job.error if job is not None else None,
            "last_seconds": job.seconds if job is not None else None,
            "samples": _samples(self.fed),
            "summary": self.fed.summary(next_rep),
            "aggregator": self.fed.aggregates is True,
            # What the FedData says of itself wins over what the device finds (an extra installed or not).
            "capabilities": {"secure_aggregation": secagg_supported(self.fed), **self.fed.capabilities()},
        }

    # -- decisions taken before any body is read ------------------------------------

    def ensure_can_accept(self, repetition: int) -> None:
        """Raise 409 when ``repetition`` is stale, or the model is being written or read."""
        with self.state_lock:
            self._ensure_can_accept(repetition)

    def _ensure_can_accept(self, repetition: int) -> None:
        if repetition <= self.last_repetition:
            raise ApiError(
                409,
                ErrorCode.STALE_REPETITION,
                f"repetition {repetition} is not above this device's last repetition "
                f"{self.last_repetition}; submit repetition {self.last_repetition + 1} or later",
            )
        job = self.job
        if job is not None and not job.done.is_set():
            raise ApiError(
                409,
                ErrorCode.BUSY,
                f"still working on repetition {job.repetition}; try again when its result has been collected",
            )
        self._ensure_writable()

    def ensure_can_evaluate(self) -> None:
        """Raise 409 busy while training, evaluating or serving a result from live memory."""
        with self.state_lock:
            job = self.job
            if job is not None and not job.done.is_set():
                raise ApiError(409, ErrorCode.BUSY, f"training repetition {job.repetition}; try again when it is done")
            self._ensure_writable()

    def _ensure_writable(self) -> None:
        if self.busy.locked():
            raise ApiError(409, ErrorCode.BUSY, "evaluating the global model; try again in a moment")
        if self.downloads:
            raise _busy_downloading()

    def take_receiving(self) -> threading.Lock:
        """The right to read one payload now, as the acquired ``receiving`` lock; else ``409 busy`` at once.

        The caller releases it once the payload and everything that references
        it (an exception's traceback included) are gone.
        """
        if not self.receiving.acquire(blocking=False):
            raise ApiError(409, ErrorCode.BUSY, "receiving another payload; try again when it is handed over")
        return self.receiving

    # -- submissions that resume (docs/protocol.md, "Transfers that resume") ------------

    def begin_upload(self, partial: PartialUpload) -> None:
        """Hold ``partial`` as the submission being received (the caller holds ``receiving``)."""
        with self.state_lock:
            self._drop_partial()
            self.partial = partial

    def upload_for(self, repetition: int) -> PartialUpload:
        """The submission of ``repetition`` that is arriving or broke part-way; else ``404 unknown_upload``."""
        with self.state_lock:
            return self._upload_for(repetition)

    def resume_upload(self, repetition: int, check: Callable[[PartialUpload], None]) -> PartialUpload:
        """The broken submission of ``repetition``, marked as read again once ``check`` (which raises) passed it."""
        with self.state_lock:
            partial = self._upload_for(repetition)
            check(partial)
            partial.reading = True
            return partial

    def _upload_for(self, repetition: int) -> PartialUpload:
        partial = self.partial
        if partial is not None and partial.expired(time.monotonic()):
            self._drop_partial()
            partial = None
        if partial is None or partial.repetition != repetition:
            held = "none" if partial is None else f"repetition {partial.repetition}"
            raise ApiError(
                404,
                ErrorCode.UNKNOWN_UPLOAD,
                f"no broken submission of repetition {repetition} is held here (held: {held}); "
                "send the whole payload again without Upload-Offset",
            )
        return partial

    def end_upload(self, partial: PartialUpload, complete: bool) -> None:
        """The request reading ``partial`` ended: forget it once ``complete``, else keep it for a resumption."""
        with self.state_lock:
            partial.reading = False
            partial.at = time.monotonic()
            if complete and self.partial is partial:
                self.partial = None

    def drop_upload(self) -> None:
        """Forget a broken submission (a fresh one replaces it); its buffer may serve the next payload."""
        with self.state_lock:
            self._drop_partial()

    def _drop_partial(self) -> None:
        partial, self.partial = self.partial, None
        if partial is not None and isinstance(partial.buffer, np.ndarray):
            with self._spare_lock:
                self._spare = partial.buffer

    # -- writes to the model ------------------------------------------------------

    def start(self, encoding: Any, repetition: int, config: Config | None = None, deadline: float | None = None) -> Job:
        """Accept a checked payload (and checked config) and work on it in a background thread.

        ``deadline``: the seconds left in the coordinator's round (``X-Fedsync-Deadline``), for a FedData that takes it.
        """
        with self.state_lock:
            self._ensure_can_accept(repetition)
            secagg = session_for_submit(self, repetition, self.secagg_required)
            if not self.busy.acquire(blocking=False):
                raise ApiError(409, ErrorCode.BUSY, "evaluating the global model; try again in a moment")
            job = Job(repetition, secagg=secagg, deadline=deadline)
            self.job = job
            self.last_repetition = repetition
        self._launch(job, encoding, config or {})
        return job

    def _launch(self, job: Job, encoding: Any, config: Config) -> None:
        """Run :meth:`_work` for ``job`` in the background: on ``executor``, else on a thread of its own."""
        if self.executor is None:
            threading.Thread(
                target=self._work, args=(job, encoding, config), name=f"fedsync-job-{job.repetition}", daemon=True
            ).start()
            return
        try:
            self.executor.submit(self._work, job, encoding, config)
        except RuntimeError:  # the executor was shut down: this job's failure
            job.error = "RuntimeError: the simulation's training pool is closed"
            self.busy.release()
            job.done.set()

    def _work(self, job: Job, encoding: Any, config: Config) -> None:
        try:
            # The contract's receive takes (encoding, repetition); takes_extra found whether this one takes config too.
            receive: Callable[..., None] = self.fed.receive
            if self._deadlines:  # an aggregator: its round below ends within what is left of the parent's
                left = None if job.deadline is None else job.deadline - (time.monotonic() - job.started)
                receive(encoding, job.repetition, config, deadline=left)
            elif self._receive_config:
                receive(encoding, job.repetition, config)
            else:
                receive(encoding, job.repetition)
            if job.secagg is not None:  # secure aggregation: the reply is masked (fedsync.secagg.device)
                with job.secagg.lock:
                    result = job.secagg.mask(self.fed, encoding, job.repetition)
            else:
                result = self.fed.serialize(job.repetition)
            response_body(result)  # fail here, with the device's message, rather than while answering
            if self.state_path is not None:  # saved before the reply is served: a restart resumes from it
                self._save_state()
            job.result = result
            job.owned = isinstance(result, (str, bytes))
            self.rounds_served += 1
        except Exception as exc:  # any failure of user code is reported to the coordinator
            logger.exception("repetition %d failed", job.repetition)
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.seconds = time.monotonic() - job.started
            spare = encoding.obj if isinstance(encoding, memoryview) and isinstance(encoding.obj, np.ndarray) else None
            del encoding
            if spare is not None:
                with self._spare_lock:
                    self._spare = spare
            del spare
            self.busy.release()
            job.done.set()

    def _save_state(self) -> None:
        """Save the device state to :attr:`state_path`; a failure fails this round, saying why."""
        assert self.state_path is not None
        try:
            save_state(self.fed, self.state_path)
        except Exception as exc:
            raise RuntimeError(f"the device state could not be saved to {self.state_path}: {exc}") from None

    def evaluate(
        self, encoding: Any, repetition: int, config: Config | None = None, deadline: float | None = None
    ) -> tuple[Any, ...]:
        """Run the FedData's evaluation now, unless the model is being written or read.

        Returns what the FedData's ``evaluate`` returned: ``(samples, metrics)``, or an aggregator's
        ``(samples, metrics, weights)``.
        """
        with self.state_lock:
            job = self.job
            if job is not None and not job.done.is_set():
                raise ApiError(409, ErrorCode.BUSY, f"training repetition {job.repetition}; try again when it is done")
            if self.downloads:
                raise _busy_downloading()
            if not self.busy.acquire(blocking=False):
                raise ApiError(409, ErrorCode.BUSY, "training or evaluating already; try again when it is done")
            try:
                if job is not None and job.result is not None and not job.owned:
                    # Copy-on-write: evaluate writes the model, which the result views.
                    # Under the lock, so no download can start reading live memory meanwhile.
                    job.result, job.owned = owned_copy(job.result), True
            except BaseException:
                self.busy.release()
                raise
        try:
            # As receive: evaluate(encoding, repetition), with config when takes_extra found it takes one.
            evaluate: Callable[..., tuple[Any, ...]] = self.fed.evaluate
            if self._deadlines:
                return evaluate(encoding, repetition, config or {}, deadline=deadline)
            if self._evaluate_config:
                return evaluate(encoding, repetition, config or {})
            return evaluate(encoding, repetition)
        except NotImplementedError as exc:
            raise ApiError(501, ErrorCode.NOT_SUPPORTED, str(exc)) from None
        except Exception as exc:  # user code: report its message, keep serving
            logger.exception("evaluation failed")
            raise ApiError(500, ErrorCode.EVALUATION_FAILED, f"{type(exc).__name__}: {exc}") from None
        finally:
            self.busy.release()

    # -- reads of the result --------------------------------------------------------

    def open_download(self, job: Job, sock: socket.socket | None, offset: int = 0) -> tuple[Any, str, int]:
        """The body of ``job``'s result from byte ``offset`` on, its mimetype and whole length; counted
        while it reads live memory.

        ``sock``: the connection the body may be written to directly (:mod:`fedsync.device._reply`).

        Raises ``404 unknown_repetition`` if a newer submission replaced ``job``, ``416 bad_range``
        (with ``Content-Range: bytes */L``) if ``offset`` is not below the result's length ``L``.
        """
        with self.state_lock:
            if self.job is not job:
                current = self.job.repetition if self.job is not None else "none"
                raise ApiError(
                    404, ErrorCode.UNKNOWN_REPETITION, f"repetition {job.repetition} was replaced (current: {current})"
                )
            result, owned = job.result, job.owned
            if result is None:  # a job done without an error has its result (_work sets one or the other)
                raise AssertionError(f"repetition {job.repetition} has no result to download")
            if offset:
                length = reply_length(result)
                if offset >= length:
                    raise HeadedError(
                        416,
                        ErrorCode.BAD_RANGE,
                        f"Range starts at byte {offset}, past the result's {length} bytes; ask for bytes=N- "
                        f"with N below {length}",
                        {"Content-Range": f"bytes */{length}"},
                    )
            if not owned:
                self.downloads += 1
        release = None if owned else once(self._download_done)
        return download(result, sock, release, offset)

    def _download_done(self) -> None:
        with self.state_lock:
            self.downloads -= 1


def _samples(fed: FedData) -> int | None:
    samples = getattr(fed, "samples", None)
    return samples if is_int(samples) else None
