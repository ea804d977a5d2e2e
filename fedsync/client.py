"""The coordinator side: :class:`Remote` devices and the :class:`Federated` round."""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

from . import checkpoint as checkpoint_io

from .errors import (
    PayloadRejected,
    RemoteBusy,
    RemoteError,
    RemoteTimeout,
    RemoteUnavailable,
    RoundFailed,
    SpecsMismatch,
    TrainingFailed,
)
from .codec import Payload, read_exactly
from .history import EvaluationResult, History, RoundResult
from .metrics import weighted_means
from .protocol import Encoding, FedData
from .replies import ReplyStream
from .workers import Workers, concurrently
from .server import REPETITION_HEADER, SPECS_HEADER

__all__ = ["Remote", "Federated", "RoundResult", "EvaluationResult", "History", "EarlyStopping"]

logger = logging.getLogger("fedsync")


MAX_REPLY = 2 * 1024**3
"""Default largest whole result a :class:`Remote` downloads, in bytes (as a device's default limit)."""


class Remote:
    """A device as seen from the coordinator: its URL and one HTTP session.

    Every call has a timeout; connection errors are retried with backoff
    (``retries`` times), other errors are not. Use it as a context manager, or
    call :meth:`close`, to release its connections.

    Args:
        url: the device's base URL, e.g. ``"http://127.0.0.1:8000"`` (or with a
            named base: ``"http://host:8000/model"``).
        timeout: seconds for connecting and for each answer.
        token: sent as ``Authorization: Bearer <token>`` (see ``serve(token=...)``).
        retries: connection attempts retried with backoff.
        verify: TLS verification for ``https://``: ``True``, ``False`` or a CA bundle path.
        max_reply: the largest result, in bytes, downloaded whole (FedData that read
            replies as streams check their size against the model instead).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        retries: int = 3,
        verify: bool | str = True,
        max_reply: int = MAX_REPLY,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"Remote URL must start with http:// or https://, got {url!r}; e.g. Remote('http://127.0.0.1:8000')")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.max_reply = int(max_reply)
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=0, status=0, other=0, backoff_factor=0.1)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # Proxies and the CA bundle from the environment are resolved once here:
        # requests would look them up again on every request (about 0.7 ms each).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.url))
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.trust_env = False
        self.verify = verify

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    # -- calls -----------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The device's handshake: protocol, specs, last repetition, state, summary."""
        response = self._request("GET", "/info", timeout=self.timeout)
        try:
            info = response.json()
        except ValueError:
            raise RemoteError(self.url, f"/info did not answer JSON: {response.text[:200]!r}") from None
        if not isinstance(info, dict) or not isinstance(info.get("specs"), str):
            raise RemoteError(self.url, "/info answered no specs; is this a fedsync device?")
        return info

    def submit(self, repetition: int, payload: Encoding, specs: str, *, timeout: float | None = None) -> None:
        """Hand the device ``payload`` for ``repetition``; returns once it accepted (202)."""
        body, mimetype = _body(payload)
        self._request(
            "POST",
            f"/{repetition}/submit",
            data=body,
            headers={SPECS_HEADER: specs, "Content-Type": mimetype},
            timeout=timeout or self.timeout,
        )

    def ready(self, repetition: int, wait: float, *, timeout: float | None = None) -> bool:
        """Long-poll up to ``wait`` seconds for the result without downloading it.

        ``True`` once the result is ready, ``False`` if the device is still working;
        raises the device's own error if its training failed.
        """
        response = self._poll("HEAD", repetition, wait, timeout, check=False)
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 202:
            return False
        # A HEAD answer has no body: ask again with GET, which carries the device's message.
        return self.result(repetition, 0.0) is not None

    def result(self, repetition: int, wait: float, *, timeout: float | None = None, as_view: bool = False) -> Encoding | None:
        """Long-poll up to ``wait`` seconds; the device's payload, or ``None`` if still working.

        ``as_view``: return a binary payload as a memoryview of a numpy-allocated
        buffer (see ``FedData.accepts_views``) rather than ``bytes``.
        """
        response = self._result_response(repetition, wait, timeout)
        if response is None:
            return None
        with response:
            text = response.headers.get("Content-Type", "").startswith("text/plain")
            body = self._read_body(response, as_view=as_view and not text)
        if text:
            try:
                return body.decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteError(self.url, "sent a text/plain result that is not UTF-8") from None
        return body

    def open_result(self, repetition: int, wait: float = 0.0, *, timeout: float | None = None, deadline: float | None = None) -> ReplyStream | None:
        """Long-poll up to ``wait`` seconds; the result as a :class:`~fedsync.replies.ReplyStream`
        whose body is not read yet, or ``None`` if the device is still working.

        ``deadline`` (a ``time.monotonic()`` value) bounds reading the body.
        """
        def open_body(wait: float = 0.0) -> tuple[requests.Response, int] | None:
            response = self._result_response(repetition, wait, timeout)
            if response is None:
                return None
            try:
                return response, int(response.headers["Content-Length"])
            except (KeyError, ValueError):
                response.close()
                raise RemoteError(self.url, "sent its result without a Content-Length") from None

        def open_again() -> tuple[requests.Response, int]:
            opened = open_body()
            if opened is None:
                raise RemoteError(self.url, f"no longer has the result of repetition {repetition}")
            return opened

        opened = open_body(wait)
        if opened is None:
            return None
        return ReplyStream(self.url, opened, open_again, deadline if deadline is not None else math.inf)

    def evaluate(self, repetition: int, payload: Encoding, specs: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the device to evaluate ``payload`` on its data: ``{"samples": n, "metrics": {...}}``."""
        body, mimetype = _body(payload)
        response = self._request(
            "POST",
            f"/{repetition}/evaluate",
            data=body,
            headers={SPECS_HEADER: specs, "Content-Type": mimetype},
            timeout=timeout or self.timeout,
        )
        try:
            answer = response.json()
            samples, metrics = int(answer["samples"]), {str(k): float(v) for k, v in answer["metrics"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RemoteError(self.url, f"evaluation answered no samples and metrics: {response.text[:200]!r}") from None
        if samples < 0:
            raise RemoteError(self.url, f"evaluation reported {samples} samples")
        return {"samples": samples, "metrics": metrics}

    def close(self) -> None:
        """Release the session's connections."""
        self.session.close()

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def _result_response(self, repetition: int, wait: float, timeout: float | None) -> requests.Response | None:
        """``GET {rep}/result?wait=``, its body unread; ``None`` while the device is still working."""
        response = self._poll("GET", repetition, wait, timeout, stream=True)
        if response.status_code == 202:
            response.close()
            return None
        answered = response.headers.get(REPETITION_HEADER)
        if answered not in (None, str(repetition)):
            response.close()
            raise RemoteError(self.url, f"answered repetition {answered} instead of {repetition}")
        return response

    def _poll(self, method: str, repetition: int, wait: float, timeout: float | None, **kwargs: Any) -> requests.Response:
        """A long-poll of ``{rep}/result``: the read timeout covers the wait."""
        read_timeout = timeout if timeout is not None else wait + self.timeout
        return self._request(
            method, f"/{repetition}/result", params={"wait": f"{wait:.3f}"}, timeout=(self.timeout, read_timeout), **kwargs
        )

    def _request(self, method: str, path: str, check: bool = True, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path, verify=self.verify, **kwargs)
        except requests.exceptions.Timeout as exc:
            raise RemoteTimeout(self.url, f"no answer within the timeout ({_short(exc)})") from None
        except requests.exceptions.ConnectionError as exc:
            raise RemoteUnavailable(self.url, f"cannot connect: is the device running? ({_short(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise RemoteError(self.url, _short(exc)) from None
        if check and response.status_code >= 400:
            with response:
                self._raise_for(response)
        return response

    def _raise_for(self, response: requests.Response) -> None:
        try:
            detail = response.json()
            code, message = str(detail["error"]), str(detail["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", f"HTTP {response.status_code}: {response.text[:200]!r}"
        status = response.status_code
        if code == "specs_mismatch":
            raise SpecsMismatch(f"{self.url}: {message}")
        if code == "busy":
            raise RemoteBusy(self.url, message)
        if code == "training_failed":
            raise TrainingFailed(self.url, f"training failed on the device: {message}")
        if status in (400, 411, 413):
            raise PayloadRejected(f"{self.url}: device rejected the payload ({status} {code}): {message}")
        raise RemoteError(self.url, f"HTTP {status} {code}: {message}")

    def _read_unsized(self, response: requests.Response) -> bytes:
        """A body sent without a Content-Length, read until it ends or passes ``max_reply``."""
        body = bytearray()
        try:
            for piece in response.iter_content(1 << 20):
                body += piece
                if len(body) > self.max_reply:
                    raise RemoteError(self.url, f"sent a result of more than max_reply ({self.max_reply}) bytes; raise it with Remote(url, max_reply=...)")
        except requests.exceptions.RequestException as exc:
            raise RemoteUnavailable(self.url, f"connection lost while reading the result ({_short(exc)})") from None
        return bytes(body)

    def _read_body(self, response: requests.Response, as_view: bool = False) -> Any:
        """Read the whole body into one buffer, copying it once from the socket.

        ``as_view`` reads into numpy-allocated memory (huge pages where the system
        allows) and returns a memoryview: a fresh bytes or bytearray of a model's
        size costs tens of milliseconds of page faults (measured in benchmarks/).
        """
        try:
            length = int(response.headers["Content-Length"])
        except (KeyError, ValueError):
            return self._read_unsized(response)
        if length > self.max_reply:
            raise RemoteError(self.url, f"announced a result of {length} bytes, over max_reply ({self.max_reply}); raise it with Remote(url, max_reply=...)")
        # urllib3's own read() and readinto() pass the body through a temporary of
        # its size; the http.client response underneath (_fp) fills our buffer.
        source = getattr(response.raw, "_fp", None)
        try:
            if as_view and hasattr(source, "readinto"):
                body: Any = read_exactly(source.readinto, length, as_view=True)
            else:
                body = response.raw.read(length)
        except Exception as exc:  # urllib3 and http.client raise several types for a lost connection
            raise RemoteUnavailable(self.url, f"connection lost while reading the result ({_short(exc)})") from None
        if len(body) != length:
            raise RemoteUnavailable(self.url, f"result ended after {len(body)} of {length} bytes")
        return body


def _body(payload: Encoding) -> tuple[Any, str]:
    if isinstance(payload, str):
        return payload.encode("utf-8"), "text/plain; charset=utf-8"
    return payload, "application/octet-stream"


def _size(payload: Encoding) -> int:
    if isinstance(payload, str):
        return len(payload.encode("utf-8"))
    if isinstance(payload, (Payload, ReplyStream)):
        return len(payload)
    return memoryview(payload).nbytes


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


DOWNLOAD_BUDGET = 64 * 1024 * 1024
"""Bytes of whole replies the coordinator may hold at once when ``downloads`` is not given."""

WORKERS = 64
"""Default bound on the threads a round uses to talk to devices."""

SHARED_POLL = 1.0
"""Longest long-poll when more devices than workers take turns."""

STREAMS = 4
"""Replies handed to the merge at once for FedData that read them as streams, when ``downloads`` is not given."""


@dataclass
class _Round:
    """What a round's per-device steps share."""

    rep: int
    specs: str
    payload: Encoding
    deadline: float
    timeout: float
    cancel: threading.Event
    slots: threading.Semaphore
    arrivals: queue.Queue
    workers: Workers
    wait: float
    """The longest single long-poll."""
    direct: bool
    """Fetch replies with the long-poll rather than ``HEAD`` then ``GET`` (see ``Federated._direct``)."""

    def download_slot(self, remote: Remote) -> bool:
        """Wait for a download slot; ``False`` if the round ended meanwhile."""
        while not self.cancel.is_set():
            if self.slots.acquire(timeout=min(0.5, self.remaining(remote))):
                return not self.cancel.is_set()
        return False

    def remaining(self, remote: Remote) -> float:
        """Seconds left in the round; raises :class:`RemoteTimeout` naming ``remote`` once none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RemoteTimeout(remote.url, f"no result for repetition {self.rep} within the round's timeout of {self.timeout:g}s")
        return left


class Federated:
    """Runs synchronized federated rounds of ``data`` across ``remotes``.

    ``FedData`` says *what* is exchanged and how it merges; ``Federated`` says
    *when* and *with whom*: sampling, quorum, deadlines, evaluation, history
    and checkpoints.

    Args:
        data: the coordinator's FedData; each round merges the devices' results into it.
        remotes: the devices, as :class:`Remote` objects or URLs.
        fraction: the share of remotes sampled each round (at least one, and at
            least ``min_results``).
        min_results: how many sampled devices must answer for a round to merge
            (default: all sampled). Below it the round raises
            :class:`~fedsync.errors.RoundFailed` and ``data`` is unchanged.
        timeout: the most seconds a round waits for devices, from submission to
            the last result; a device not done by then is reported by URL and its
            late result dropped.
        seed: makes the sampling reproducible.
        checkpoint: a folder; after every merged round the state, history and
            repetition are written there atomically, and a new ``Federated`` with
            the same folder resumes from them.
        poll: the longest single long-poll, in seconds; it bounds how quickly an
            abandoned round releases its threads.
        downloads: how many replies may be handed over at once, waiting to be
            merged. A FedData that reads replies as streams (``accepts_streams``:
            FedArrays and the adapters) folds each into its running sum while it
            downloads, so a reply costs only socket buffers: default ``STREAMS``
            (4). Other FedData get whole replies, each costing its size: by
            default as many as fit in 64 MiB (at least one). Streams, and whole
            replies when ``downloads`` is unset and they all fit in 64 MiB
            together, come with the long-poll that finds them ready (one request
            fewer per device) and wait unread for a slot.
        workers: the most threads talking to devices at once (submissions,
            long-polls, downloads). With more sampled devices than workers,
            devices take turns: each long-poll then waits at most
            ``SHARED_POLL`` seconds before the next device's turn.
        dashboard: a TCP port on 127.0.0.1 where a live page of this run is
            served (``0``: any free port; ``alg.dashboard.url`` says which) until
            :meth:`close`. See docs/dashboard.md.
    """

    def __init__(
        self,
        data: FedData,
        remotes: Sequence[Remote | str],
        *,
        fraction: float = 1.0,
        min_results: int | None = None,
        timeout: float = 600.0,
        seed: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        poll: float = 10.0,
        downloads: int | None = None,
        workers: int = WORKERS,
        dashboard: int | None = None,
    ) -> None:
        if not isinstance(data, FedData):
            raise TypeError(f"data must be a FedData, got {type(data).__name__}; e.g. Federated(data=FedKeras(model, None), remotes=[...])")
        self.remotes = [r if isinstance(r, Remote) else Remote(r) for r in remotes]
        if not self.remotes:
            raise ValueError("Federated needs at least one remote, e.g. remotes=[Remote('http://127.0.0.1:8000')]")
        urls = [r.url for r in self.remotes]
        if len(set(urls)) != len(urls):
            raise ValueError(f"the same device is listed twice: {sorted({u for u in urls if urls.count(u) > 1})}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if min_results is not None and not 1 <= min_results <= len(self.remotes):
            raise ValueError(f"min_results must be between 1 and the number of remotes ({len(self.remotes)}), got {min_results}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.data = data
        self.fraction = float(fraction)
        self.min_results = min_results
        self.timeout = float(timeout)
        self.poll = float(poll)
        if downloads is not None and downloads < 1:
            raise ValueError(f"downloads must be at least 1, got {downloads!r}")
        self.downloads = downloads
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        self.workers = int(workers)
        self.repetition = 0
        self.history = History()
        self._rng = random.Random(seed)
        self._known: set[str] = set()
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.checkpoint is not None:
            restored = checkpoint_io.load(self.checkpoint, data)
            if restored is not None:
                self.repetition, self.history = restored
                logger.info("resumed from %s after repetition %d (%d rounds done)", self.checkpoint, self.repetition, len(self.history))
        # The dashboard (fedsync.dashboard) is imported only when asked for.
        self.dashboard = None if dashboard is None else _dashboard().start(self, dashboard)

    # -- rounds --------------------------------------------------------------------

    def sample(self) -> list[Remote]:
        """The remotes taking part in the next round (reproducible with ``seed``)."""
        count = max(1, math.ceil(self.fraction * len(self.remotes)), self.min_results or 1)
        if count >= len(self.remotes):
            return list(self.remotes)
        chosen = set(self._rng.sample(range(len(self.remotes)), count))
        return [r for i, r in enumerate(self.remotes) if i in chosen]

    def round(self) -> RoundResult:
        """Run one synchronized round: send, train on devices, collect, merge.

        Raises:
            SpecsMismatch: a device holds a different FedData (nothing was sent).
            RoundFailed: too few devices answered; the FedData is unchanged.
        """
        result = self._train_round()
        self._record(result)
        return result

    def evaluate(self) -> EvaluationResult:
        """Evaluate the current global state on the sampled devices, without training.

        Devices need an ``evaluate`` callback; metrics are averaged by sample count.
        """
        started = time.monotonic()
        failures: dict[str, str] = {}
        remotes = self._handshake(self.sample(), failures)
        rep = max(self.repetition, 1)
        specs, payload = self.data.specs(rep), self.data.serialize(rep)
        answers = concurrently(
            {r.url: (lambda r=r: r.evaluate(rep, payload, specs, timeout=self.timeout)) for r in remotes}, self.workers
        )
        result = EvaluationResult(repetition=rep, failures=failures)
        for url, answer in answers.items():
            if isinstance(answer, BaseException):
                result.failures[url] = _reason(answer)
            else:
                result.devices[url] = answer
        records = list(result.devices.values())
        result.samples = sum(r["samples"] for r in records)
        result.metrics = weighted_means(records)
        result.seconds = time.monotonic() - started
        if not records:
            raise RoundFailed(f"evaluation after repetition {rep}: no device answered", result.failures)
        logger.info("evaluation after round %d: %s", rep, _format_metrics(result.metrics))
        return result

    def fit(
        self,
        rounds: int,
        *,
        evaluate_every: int = 0,
        callbacks: Sequence[Callable[["Federated", RoundResult], Any]] = (),
        progress: bool | None = None,
    ) -> History:
        """Run until ``rounds`` rounds have merged (counting those restored from a checkpoint).

        Args:
            rounds: the total number of rounds of the run.
            evaluate_every: run :meth:`evaluate` after every n-th round (0: never).
            callbacks: ``callback(alg, result)`` after each round; returning ``True``
                stops early (see :class:`EarlyStopping`).
            progress: show a progress bar; default: when stderr is a terminal.

        Returns:
            The :class:`History` of every round, also kept as ``alg.history``.
        """
        if progress is None:
            progress = sys.stderr.isatty()
        if self.dashboard is not None or self.checkpoint is not None:
            _dashboard().fit_started(self, rounds)  # the plan, for the dashboard and checkpoint watchers
        with tqdm(total=rounds, initial=min(len(self.history), rounds), disable=not progress, unit="round", desc="fedsync") as bar:
            while len(self.history) < rounds:
                result = self._train_round()
                if evaluate_every and (len(self.history) + 1) % evaluate_every == 0:
                    try:
                        result.evaluation = self.evaluate()
                    except RoundFailed as exc:  # the merged round is kept all the same
                        logger.warning("evaluation after round %d failed: %s", result.repetition, exc)
                        result.evaluation = EvaluationResult(repetition=result.repetition, failures=exc.failures)
                self._record(result)
                bar.update(1)
                shown = result.evaluation.metrics if result.evaluation else result.metrics
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(shown.items())[:3]}, refresh=False)
                stop = [callback(self, result) for callback in callbacks]
                if any(s is True for s in stop):
                    logger.info("stopped early after round %d", result.repetition)
                    break
        return self.history

    # -- the round's parts -------------------------------------------------------------

    def _train_round(self) -> RoundResult:
        started = time.monotonic()
        deadline = started + self.timeout
        failures: dict[str, str] = {}
        sampled = self.sample()
        needed = min(self.min_results or len(sampled), len(sampled))
        remotes = self._handshake(sampled, failures)
        rep = self.repetition + 1
        self.repetition = rep  # devices that accepted rep refuse it again, whatever happens next
        result = RoundResult(repetition=rep, failures=failures)
        if len(remotes) < needed:
            raise RoundFailed(f"round {rep}: only {len(remotes)} of {needed} required devices are reachable", failures)
        specs = self.data.specs(rep)
        payload = self.data.serialize(rep)
        arrivals: queue.Queue = queue.Queue()
        cancel = threading.Event()
        slots = threading.Semaphore(self.downloads or self._default_downloads(payload))
        workers = Workers(min(self.workers, len(remotes)), name=f"fedsync-round-{rep}")
        state = _Round(
            rep=rep, specs=specs, payload=payload, deadline=deadline, timeout=self.timeout,
            cancel=cancel, slots=slots, arrivals=arrivals, workers=workers,
            wait=self.poll if len(remotes) <= workers.size else min(self.poll, SHARED_POLL),
            direct=self._direct(payload, len(remotes)),
        )
        for remote in remotes:
            workers.submit(self._submit, state, remote)
        try:
            self.data.merge(self._collect(rep, remotes, needed, deadline, arrivals, slots, result, _size(payload)), rep)
        finally:
            cancel.set()
            workers.close()
            _close_waiting(arrivals)
        report = getattr(self.data, "last_merge", None)
        if isinstance(report, dict) and len(report.get("devices", ())) == len(result.answered):
            result.samples = report.get("samples")
            result.metrics = dict(report.get("metrics", {}))
            result.devices = dict(zip(result.answered, report["devices"]))
        result.seconds = time.monotonic() - started
        return result

    def _record(self, result: RoundResult) -> None:
        self.history.append(result)
        if self.checkpoint is not None:
            checkpoint_io.save(self.checkpoint, self.data, result.repetition, self.history)
        logger.info(
            "round %d: %d device(s), %d failed, %s samples, %s, %.2fs",
            result.repetition, len(result.answered), len(result.failures), result.samples,
            _format_metrics(result.metrics), result.seconds,
        )

    def _handshake(self, remotes: list[Remote], failures: dict[str, str]) -> list[Remote]:
        """Ask devices not yet known for ``/info``; check specs before anything is sent."""
        unknown = [r for r in remotes if r.url not in self._known]
        infos = concurrently({r.url: r.info for r in unknown}, self.workers)
        next_rep = self.repetition + 1
        for info in infos.values():
            if not isinstance(info, BaseException):
                next_rep = max(next_rep, int(info.get("repetition", 0)) + 1)
        for remote in unknown:
            info = infos[remote.url]
            if isinstance(info, BaseException):
                failures[remote.url] = _reason(info)
                continue
            expected = self.data.specs(next_rep)
            if info["specs"] != expected:
                raise SpecsMismatch(_mismatch_message(remote.url, expected, info, self.data.summary(next_rep)))
            self._known.add(remote.url)
        self.repetition = next_rep - 1
        return [r for r in remotes if r.url in self._known]

    # -- one device's part of a round: steps run by the round's workers ---------------
    #
    # _submit, then _poll until the result is ready, then _deliver it to ``arrivals``
    # (where _collect hands it to the merge). Every step ends by queuing the next or by
    # putting the device's reply or error in ``arrivals``, except when the round is over.
    # A reply is handed over only under one of the round's download ``slots``, which
    # the merge frees after folding it in: the coordinator holds a bounded number of
    # replies whatever the number of devices. With ``state.direct`` (streams, and small
    # whole replies) the reply comes with the long-poll that finds it ready: one
    # request fewer per device; otherwise ``HEAD`` finds it ready and ``GET`` fetches it
    # once a slot is free.

    def _submit(self, state: "_Round", remote: Remote) -> None:
        try:
            remote.submit(state.rep, state.payload, state.specs, timeout=max(0.1, min(remote.timeout, state.remaining(remote))))
        except Exception as exc:
            state.arrivals.put((remote, exc))
            return
        state.workers.submit(self._poll, state, remote)  # behind the other submissions

    def _poll(self, state: "_Round", remote: Remote) -> None:
        """One long-poll; queues the next one behind the other devices' unless the result is ready."""
        reply: Any = None
        try:
            if state.cancel.is_set():
                return
            wait = min(state.wait, state.remaining(remote))
            timeout = min(wait + remote.timeout, state.remaining(remote) + 1.0)
            if state.direct:
                reply = self._fetch(remote, state, wait, timeout)
                ready = reply is not None
            else:
                ready = remote.ready(state.rep, wait, timeout=timeout)
            if not ready:
                state.workers.submit(self._poll, state, remote)
                return
            if not state.download_slot(remote):
                _close(reply)
                return
        except Exception as exc:
            _close(reply)
            state.arrivals.put((remote, exc))
            return
        self._deliver(state, remote, reply)

    def _deliver(self, state: "_Round", remote: Remote, reply: Any) -> None:
        """Holding a download slot: fetch the reply unless the poll did, check it, hand it over."""
        try:
            if reply is None:
                reply = self._fetch(remote, state, 0.0, state.remaining(remote) + 1.0)
                if reply is None:
                    raise RemoteError(remote.url, f"announced the result of repetition {state.rep} but did not send it")
            if not self.data.accepts_streams:  # a stream is checked by the merge as it reads
                try:
                    self.data.check(reply, state.rep)
                except ValueError as exc:
                    raise PayloadRejected(f"reply rejected: {exc}") from None
            state.arrivals.put((remote, reply))
        except Exception as exc:
            _close(reply)
            state.slots.release()
            state.arrivals.put((remote, exc))

    def _fetch(self, remote: Remote, state: "_Round", wait: float, timeout: float) -> Encoding | ReplyStream | None:
        """The result, opened as a stream or downloaded as this FedData takes it; ``None`` if not ready."""
        if self.data.accepts_streams:
            return remote.open_result(state.rep, wait, timeout=timeout, deadline=state.deadline)
        return remote.result(state.rep, wait, timeout=timeout, as_view=self.data.accepts_views)

    def _collect(self, rep: int, remotes: list[Remote], needed: int, deadline: float, arrivals: queue.Queue, slots: threading.Semaphore, result: RoundResult, sent: int) -> Iterator[Encoding]:
        """Yield replies in arrival order; raise RoundFailed once the quorum is out of reach.

        Streamed replies the merge rejected (:meth:`ReplyStream.reject`) move from
        ``answered`` to ``failures`` when the merge asks for the next one.
        """
        pending = {r.url for r in remotes}
        streams: list[ReplyStream] = []

        def settle() -> bool:
            """Count rejected streams as failures; ``False`` once the quorum is out of reach."""
            for stream in [s for s in streams if s.rejected is not None]:
                streams.remove(stream)
                result.answered.remove(stream.url)
                result.failures[stream.url] = f"PayloadRejected: reply rejected: {stream.rejected}"
            return len(result.answered) + len(pending) >= needed

        while pending:
            try:
                remote, reply = arrivals.get(timeout=max(0.0, deadline - time.monotonic()) + 2.0)
            except queue.Empty:
                for url in sorted(pending):
                    result.failures[url] = f"RemoteTimeout: no result within the round's timeout of {self.timeout:g}s"
                break
            pending.discard(remote.url)
            if isinstance(reply, BaseException):
                result.failures[remote.url] = _reason(reply)
                if not isinstance(reply, RemoteBusy):
                    self._known.discard(remote.url)  # re-handshake: it may have restarted
                if len(result.answered) + len(pending) < needed:
                    self._gather_reasons(pending, arrivals, result, deadline)
                    break
                continue
            result.answered.append(remote.url)
            result.bytes_sent += sent
            result.bytes_received += _size(reply)
            if isinstance(reply, ReplyStream):
                streams.append(reply)
            try:
                yield reply
            finally:
                _close(reply)
                del reply
                slots.release()  # folded in: the next reply may download
            if not settle():
                self._gather_reasons(pending, arrivals, result, deadline)
                break
        settle()
        if len(result.answered) < needed:
            raise RoundFailed(
                f"round {rep} failed: {len(result.answered)} of {needed} required devices answered; "
                "the coordinator's data is unchanged",
                result.failures,
            )

    def _direct(self, payload: Encoding, devices: int) -> bool:
        """Whether the long-poll that finds a reply ready should bring the reply too.

        An unread stream costs only socket buffers, so streams always may; whole
        replies only when all of them fit in ``DOWNLOAD_BUDGET`` and ``downloads``
        was not set (they arrive before a download slot is free).
        """
        if self.data.accepts_streams:
            return True
        return self.downloads is None and _size(payload) * devices <= DOWNLOAD_BUDGET

    def _default_downloads(self, payload: Encoding) -> int:
        if self.data.accepts_streams:
            return STREAMS
        return max(1, DOWNLOAD_BUDGET // max(1, _size(payload)))

    @staticmethod
    def _gather_reasons(pending: set[str], arrivals: queue.Queue, result: RoundResult, deadline: float, grace: float = 2.0) -> None:
        """The round has failed: wait briefly so the error can say why the others failed too."""
        until = min(deadline, time.monotonic() + grace)
        while pending:
            try:
                remote, reply = arrivals.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            pending.discard(remote.url)
            if isinstance(reply, BaseException):
                result.failures[remote.url] = _reason(reply)
            else:
                result.failures[remote.url] = "answered, but the round had already failed"
        for url in sorted(pending):
            result.failures[url] = "still working when the round failed"

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Close every remote's connections, and the dashboard."""
        for remote in self.remotes:
            remote.close()
        if self.dashboard is not None:
            self.dashboard.close()

    def __enter__(self) -> "Federated":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EarlyStopping:
    """A ``fit`` callback that stops when a metric has not improved for ``patience`` rounds.

    Args:
        metric: the metric's name, e.g. ``"accuracy"``.
        patience: rounds without improvement before stopping.
        mode: ``"max"`` (higher is better) or ``"min"``.
        evaluation: read the metric from federated evaluation (else from training).
    """

    def __init__(self, metric: str, patience: int = 3, mode: str = "max", evaluation: bool = True) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.patience, self.mode, self.evaluation = metric, patience, mode, evaluation
        self.best: float | None = None
        self.waited = 0

    def __call__(self, alg: Federated, result: RoundResult) -> bool:
        source = result.evaluation.metrics if (self.evaluation and result.evaluation) else None if self.evaluation else result.metrics
        if source is None or self.metric not in source:
            return False
        value = source[self.metric]
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.waited = value, 0
            return False
        self.waited += 1
        return self.waited >= self.patience


def _dashboard() -> Any:
    from . import dashboard

    return dashboard


def _close(reply: Any) -> None:
    if isinstance(reply, ReplyStream):
        reply.close()


def _close_waiting(arrivals: queue.Queue) -> None:
    """Close replies opened for a round that no longer wants them."""
    while True:
        try:
            _, reply = arrivals.get_nowait()
        except queue.Empty:
            return
        _close(reply)


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no metrics"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"{type(exc).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _mismatch_message(url: str, expected: str, info: dict[str, Any], summary: dict[str, Any] | None) -> str:
    message = f"{url} holds specs {info['specs']!r} but the coordinator's are {expected!r}"
    diff = _first_difference(summary, info.get("summary"))
    if diff:
        message += f"; first difference: {diff}"
    return message + ". Declare the same FedData (same architecture) on both sides; nothing was sent."


def _first_difference(ours: Any, theirs: Any) -> str | None:
    """The first weight whose name, shape or dtype differs between two summaries."""
    try:
        mine = [(w["name"], tuple(w["shape"]), w["dtype"]) for w in ours["weights"]]
        other = [(w["name"], tuple(w["shape"]), w["dtype"]) for w in theirs["weights"]]
    except (TypeError, KeyError):
        return None
    for a, b in zip(mine, other):
        if a != b:
            if a[0] != b[0]:
                return f"expected weight {a[0]!r}, device has {b[0]!r}"
            return f"{a[0]}: expected {a[1]} {a[2]}, device has {b[1]} {b[2]}"
    if len(mine) != len(other):
        return f"expected {len(mine)} weights, device has {len(other)}"
    return None
