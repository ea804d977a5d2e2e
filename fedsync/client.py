"""The coordinator side: :class:`Remote` devices and the :class:`Federated` round."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .errors import (
    FedSyncError,
    PayloadRejected,
    RemoteBusy,
    RemoteError,
    RemoteTimeout,
    RemoteUnavailable,
    RoundFailed,
    SpecsMismatch,
    TrainingFailed,
)
from .protocol import Encoding, FedData
from .server import REPETITION_HEADER, SPECS_HEADER

__all__ = ["Remote", "Federated", "RoundResult"]

logger = logging.getLogger("fedsync")


class Remote:
    """A device as seen from the coordinator: its URL and one HTTP session.

    Every call has a timeout; connection errors are retried with backoff
    (``retries`` times), other errors are not. Use it as a context manager, or
    call :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        retries: int = 3,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"Remote URL must start with http:// or https://, got {url!r}; e.g. Remote('http://127.0.0.1:8000')")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=0, status=0, other=0, backoff_factor=0.1)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"

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
        if isinstance(payload, str):
            body: Any = payload.encode("utf-8")
            mimetype = "text/plain; charset=utf-8"
        else:
            body, mimetype = payload, "application/octet-stream"
        self._request(
            "POST",
            f"/{repetition}/submit",
            data=body,
            headers={SPECS_HEADER: specs, "Content-Type": mimetype},
            timeout=timeout or self.timeout,
        )

    def result(self, repetition: int, wait: float, *, timeout: float | None = None) -> Encoding | None:
        """Long-poll up to ``wait`` seconds; the device's payload, or ``None`` if still working."""
        read_timeout = timeout if timeout is not None else wait + self.timeout
        response = self._request(
            "GET",
            f"/{repetition}/result",
            params={"wait": f"{wait:.3f}"},
            timeout=(self.timeout, read_timeout),
            stream=True,
        )
        with response:
            if response.status_code == 202:
                return None
            if response.headers.get(REPETITION_HEADER) not in (None, str(repetition)):
                raise RemoteError(self.url, f"answered repetition {response.headers.get(REPETITION_HEADER)} instead of {repetition}")
            body = self._read_body(response)
        if response.headers.get("Content-Type", "").startswith("text/plain"):
            try:
                return bytes(body).decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteError(self.url, "sent a text/plain result that is not UTF-8") from None
        return body

    def close(self) -> None:
        """Release the session's connections."""
        self.session.close()

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path, **kwargs)
        except requests.exceptions.Timeout as exc:
            raise RemoteTimeout(self.url, f"no answer within the timeout ({_short(exc)})") from None
        except requests.exceptions.ConnectionError as exc:
            raise RemoteUnavailable(self.url, f"cannot connect: is the device running? ({_short(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise RemoteError(self.url, _short(exc)) from None
        if response.status_code >= 400:
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

    def _read_body(self, response: requests.Response) -> bytearray:
        """Read the body into one preallocated buffer (``.content`` would copy it again)."""
        try:
            length = int(response.headers["Content-Length"])
        except (KeyError, ValueError):
            return bytearray(response.content)
        buffer = bytearray(length)
        view = memoryview(buffer)
        got = 0
        try:
            while got < length:
                n = response.raw.readinto(view[got:])
                if not n:
                    break
                got += n
        except Exception as exc:  # urllib3 raises several types for a connection lost mid-body
            raise RemoteUnavailable(self.url, f"connection lost while reading the result ({_short(exc)})") from None
        if got != length:
            raise RemoteUnavailable(self.url, f"result ended after {got} of {length} bytes")
        return buffer


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


@dataclass
class RoundResult:
    """What one round did: its repetition, who answered, who failed and why."""

    repetition: int
    answered: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


_DONE = object()


class Federated:
    """Runs synchronized federated rounds of ``data`` across ``remotes``.

    Args:
        data: the coordinator's FedData; ``round()`` merges the devices' results into it.
        remotes: the devices, as :class:`Remote` objects or URLs.
        timeout: the most seconds a round waits for devices, from submission to the
            last result. A device that has not answered by then is reported by URL.
        min_results: how many devices must answer for the round to merge
            (default: all of them).
        poll: the longest single long-poll, in seconds; it bounds how quickly an
            abandoned round releases its threads.
    """

    def __init__(
        self,
        data: FedData,
        remotes: Sequence[Remote | str],
        *,
        timeout: float = 600.0,
        min_results: int | None = None,
        poll: float = 10.0,
    ) -> None:
        if not isinstance(data, FedData):
            raise TypeError(f"data must be a FedData, got {type(data).__name__}; e.g. Federated(data=FedKeras(model, None), remotes=[...])")
        self.remotes = [r if isinstance(r, Remote) else Remote(r) for r in remotes]
        if not self.remotes:
            raise ValueError("Federated needs at least one remote, e.g. remotes=[Remote('http://127.0.0.1:8000')]")
        urls = [r.url for r in self.remotes]
        if len(set(urls)) != len(urls):
            raise ValueError(f"the same device is listed twice: {sorted(u for u in urls if urls.count(u) > 1)}")
        if min_results is not None and not 1 <= min_results <= len(self.remotes):
            raise ValueError(f"min_results must be between 1 and {len(self.remotes)}, got {min_results}")
        self.data = data
        self.timeout = float(timeout)
        self.min_results = min_results
        self.poll = float(poll)
        self.repetition = 0
        self._known: set[str] = set()

    # -- the round -----------------------------------------------------------------

    def round(self) -> RoundResult:
        """Run one synchronized round: send, train on devices, collect, merge.

        Raises:
            SpecsMismatch: a device holds a different FedData (nothing was sent).
            RoundFailed: too few devices answered; the FedData is unchanged.
        """
        started = time.monotonic()
        deadline = started + self.timeout
        failures: dict[str, str] = {}
        remotes = self._handshake(failures)
        rep = self.repetition + 1
        self.repetition = rep
        needed = self.min_results if self.min_results is not None else len(self.remotes)
        if len(remotes) < needed:
            raise RoundFailed(f"round {rep}: only {len(remotes)} of {needed} required devices are reachable", failures)
        specs = self.data.specs(rep)
        payload = self.data.serialize(rep)
        arrivals: queue.Queue = queue.Queue()
        cancel = threading.Event()
        for remote in remotes:
            threading.Thread(
                target=self._work,
                args=(remote, rep, specs, payload, deadline, cancel, arrivals),
                name=f"fedsync-{remote.url}",
                daemon=True,
            ).start()
        result = RoundResult(repetition=rep, failures=failures)
        try:
            self.data.merge(self._collect(rep, remotes, needed, deadline, arrivals, result), rep)
        finally:
            cancel.set()
        result.seconds = time.monotonic() - started
        logger.info("round %d merged %d device(s) in %.2fs", rep, len(result.answered), result.seconds)
        return result

    def _handshake(self, failures: dict[str, str]) -> list[Remote]:
        """Ask devices not yet known for ``/info``; check specs before anything is sent."""
        unknown = [r for r in self.remotes if r.url not in self._known]
        infos: dict[str, Any] = {}
        threads = [threading.Thread(target=_call_into, args=(r.info, infos, r.url), daemon=True) for r in unknown]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        next_rep = self.repetition + 1
        for remote in unknown:
            info = infos[remote.url]
            if isinstance(info, BaseException):
                failures[remote.url] = _reason(info)
                continue
            next_rep = max(next_rep, int(info.get("repetition", 0)) + 1)
        for remote in unknown:
            info = infos[remote.url]
            if isinstance(info, BaseException):
                continue
            expected = self.data.specs(next_rep)
            if info["specs"] != expected:
                raise SpecsMismatch(_mismatch_message(remote.url, expected, info, self.data.summary(next_rep)))
            self._known.add(remote.url)
        self.repetition = next_rep - 1
        return [r for r in self.remotes if r.url in self._known]

    def _work(self, remote: Remote, rep: int, specs: str, payload: Encoding, deadline: float, cancel: threading.Event, arrivals: queue.Queue) -> None:
        """One device's part of a round, run in its own thread; ends in ``arrivals``."""
        try:
            remote.submit(rep, payload, specs, timeout=max(0.1, min(remote.timeout, deadline - time.monotonic())))
            reply = None
            while reply is None:
                remaining = deadline - time.monotonic()
                if cancel.is_set():
                    return
                if remaining <= 0:
                    raise RemoteTimeout(remote.url, f"no result for repetition {rep} within the round's timeout of {self.timeout:g}s")
                wait = min(self.poll, remaining)
                reply = remote.result(rep, wait, timeout=min(wait + remote.timeout, remaining + 1.0))
            try:
                self.data.check(reply, rep)
            except ValueError as exc:
                raise PayloadRejected(f"{remote.url}: reply rejected: {exc}") from None
            arrivals.put((remote, reply))
        except Exception as exc:
            arrivals.put((remote, exc))

    def _collect(self, rep: int, remotes: list[Remote], needed: int, deadline: float, arrivals: queue.Queue, result: RoundResult) -> Iterator[Encoding]:
        """Yield replies in arrival order; raise RoundFailed once the quorum is out of reach."""
        pending = {r.url for r in remotes}
        while pending:
            try:
                remote, reply = arrivals.get(timeout=max(0.0, deadline - time.monotonic()) + 2.0)
            except queue.Empty:
                for url in pending:
                    result.failures[url] = f"no result within the round's timeout of {self.timeout:g}s"
                break
            pending.discard(remote.url)
            if isinstance(reply, BaseException):
                result.failures[remote.url] = _reason(reply)
                self._known.discard(remote.url)
                if len(result.answered) + len(pending) < needed:
                    break
                continue
            result.answered.append(remote.url)
            yield reply
        if len(result.answered) < needed:
            raise RoundFailed(
                f"round {rep} failed: {len(result.answered)} of {needed} required devices answered; "
                "the coordinator's data is unchanged",
                result.failures,
            )

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Close every remote's connections."""
        for remote in self.remotes:
            remote.close()

    def __enter__(self) -> "Federated":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call_into(fn: Any, out: dict[str, Any], key: str) -> None:
    try:
        out[key] = fn()
    except Exception as exc:
        out[key] = exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"{type(exc).__name__}: {exc.reason}"
    if isinstance(exc, FedSyncError):
        return f"{type(exc).__name__}: {exc}"
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
