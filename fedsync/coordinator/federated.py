"""The coordinator side: the :class:`Federated` round over :class:`~fedsync.transports.remote.Remote` devices.

``Remote`` lives in :mod:`fedsync.transports.remote` (the HTTP transport under it in
:mod:`fedsync.transports.http`), the ``fit`` callbacks in :mod:`fedsync.coordinator.callbacks`;
import them from there (or from :mod:`fedsync`). One device's part of a round (submit, long-poll,
download, hand to the merge) is in :mod:`fedsync.coordinator._pipeline`.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import plugins
from .._util.checks import at_least_one, is_int, is_number, positive_seconds
from .._util.workers import Workers, concurrently
from ..dashboard import app as dashboard_app
from ..errors import BelowQuorum, EmptyRound, RemoteError, RoundFailed, failure_reason
from ..protocol import FedData
from ..secagg import coordinator as secure_rounds
from ..secagg.settings import SecAgg
from ..transports.remote import Remote, size
from ..wire.config import Config, ConfigSource, per_device, round_config
from ..wire.metrics import weighted_means
from ..wire.reports import metric_weights
from ..wire.transfer import STALL, Deadline, round_grace
from . import checkpoint as checkpoint_io
from . import server_eval
from ._handshake import HANDSHAKE_SHARE, Handshakes
from ._interrupt import stoppable
from ._pipeline import collect, submit
from ._privacy import check_central_dp, coordinator_privacy
from ._round import (
    Budget,
    Round,
    close_waiting,
    empty_round,
    evaluation_name,
    format_metrics,
    round_name,
    scrub_failures,
    scrubbed,
)
from ._sampling import EMPTY_ROUNDS, Sampler, checked_sampler, checked_share, chosen, draw, evaluation_rng, round_rng
from ._tree import record_merge
from .history import EvaluationResult, History, RoundResult, scrub_names, scrub_result
from .replay import record_model, record_sent, run_record

__all__ = ["Federated", "DOWNLOAD_BUDGET", "WORKERS", "SHARED_POLL", "STREAMS", "HANDSHAKE_SHARE"]

logger = logging.getLogger("fedsync")

DOWNLOAD_BUDGET = 64 * 1024 * 1024
"""Bytes of whole replies (FedData without ``accepts_streams``) the coordinator holds at once.

Each reply counts its Content-Length; a reply larger than the budget downloads alone.
"""

WORKERS = 64
"""Default bound on the threads a round uses to talk to devices."""

SHARED_POLL = 1.0
"""Longest long-poll when more devices than workers take turns."""

STREAMS = 4
"""Replies handed to the merge at once for FedData that read them as streams, when ``downloads`` is not given."""


class Federated:
    """Runs synchronized federated rounds of ``data`` across ``remotes``.

    ``FedData`` says *what* is exchanged and how it merges; ``Federated`` says
    *when* and *with whom*: sampling, quorum, deadlines, evaluation, history
    and checkpoints.

    Args:
        data: the coordinator's FedData; each round merges the devices' results into it.
        remotes: the devices, as remote objects (:class:`Remote`, or any transport's:
            see ``register_transports`` in docs/plugins.md) or URLs, each built by the
            transport registered for its scheme (``http://``, ``https://``, ``local://``).
        fraction: the share of remotes sampled each round: ``ceil(fraction * len(remotes))``
            computed exactly from the decimal text (at least one, and at least ``min_results``); default 1.
        devices_per_round: how many remotes each round samples, instead of ``fraction``.
        sampler: ``sampler(server_round, available, rng) -> devices`` chooses each round's devices
            instead (``server_round``: 1, 2, ... as the history counts; ``available``: the remotes'
            URLs; ``rng``: a ``random.Random`` seeded by ``seed`` and the round's number); it returns URLs
            from ``available``. Unknown devices, duplicates or fewer than ``min_results`` raise
            ``ValueError`` before anything is sent. docs/simulation.md shows patterns.
        min_results: how many sampled devices must answer for a round to merge
            (default: all sampled). Below it the round raises
            :class:`~fedsync.errors.RoundFailed` and ``data`` is unchanged.
        timeout: the most seconds a round waits for devices, from the handshake to
            the last result; a device not done by then is reported by URL and its
            late result dropped (see :meth:`round` for the rule at the deadline).
        seed: makes the sampling reproducible: each round draws from the seed and its number, so a
            run resumed from its checkpoint samples as the uninterrupted one; evaluation samples with a
            generator of its own, so evaluating never changes which devices train.
        empty_rounds: when every device that answered reported 0 samples, or fewer than ``min_results``
            answered: ``"fail"`` (raise :class:`~fedsync.errors.EmptyRound` or ``BelowQuorum``, both
            ``RoundFailed``) or ``"keep"`` (keep the model, record the round with ``RoundResult.empty``, go on).
        evaluate_fraction: the share of remotes :meth:`evaluate` asks (``1.0``: all); default:
            as many as a training round samples.
        checkpoint: a folder; after every merged round the state, history and
            repetition are written there atomically, and a new ``Federated`` with
            the same folder resumes from them.
        poll: the longest single long-poll, in seconds (finite, above 0); it bounds how quickly an
            abandoned round releases its threads.
        downloads: how many replies may be handed over at once, waiting to be
            merged. A FedData that reads replies as streams (``accepts_streams``:
            FedArrays and the adapters) folds each into its running sum while it
            downloads, so a reply costs only socket buffers: default ``STREAMS``
            (4). Other FedData get whole replies, each costing its size: whatever
            ``downloads`` says, the whole replies held at once total at most
            ``DOWNLOAD_BUDGET`` (64 MiB) by their Content-Length, a larger reply
            downloading alone. Every reply comes with the long-poll that finds it
            ready and waits unread in its socket for a slot.
        workers: the most threads talking to devices at once (submissions,
            long-polls, downloads). With more sampled devices than workers,
            devices take turns: each long-poll then waits at most
            ``SHARED_POLL`` seconds before the next device's turn.
        dashboard: a TCP port on 127.0.0.1 where a live page of this run is
            served (``0``: any free port; ``federated.dashboard.url`` says which) until
            :meth:`close`. See docs/dashboard.md.
        config: the configuration sent to the devices each round (Flower's
            ``on_fit_config_fn``): a dict, ``config(server_round) -> dict``, or
            ``config(server_round, device) -> dict`` (``device``: its URL) for each sampled device
            (``configure_fit``); ``train(model, config)`` gets it. See docs/fedprox-and-config.md.
        evaluate_fn: ``evaluate_fn(model, server_round) -> metrics``, run on the
            coordinator after every ``evaluate_fn_every``-th round; recorded in
            ``RoundResult.server_evaluation`` (see :mod:`fedsync.coordinator.server_eval`).
        secure_aggregation: a :class:`fedsync.secagg.SecAgg`: the coordinator learns only the sum of the
            updates (docs/privacy.md).

    Raises:
        TypeError, ValueError: an argument out of range, named; central DP (a ``DPFixedClipping``
            strategy) over a model with running statistics (BatchNorm) raises
            :class:`fedsync.privacy.RunningStatistics` naming the layer (docs/privacy.md).
    """

    def __init__(
        self,
        data: FedData,
        remotes: Sequence[Remote | str],
        *,
        fraction: float | None = None,
        devices_per_round: int | None = None,
        sampler: Sampler | None = None,
        min_results: int | None = None,
        timeout: float = 600.0,
        seed: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        poll: float = 10.0,
        downloads: int | None = None,
        workers: int = WORKERS,
        dashboard: int | None = None,
        config: ConfigSource = None,
        evaluate_fn: server_eval.EvaluateFn | None = None,
        evaluate_fn_every: int = 1,
        secure_aggregation: Any = None,
        empty_rounds: str = "fail",
        evaluate_fraction: float | None = None,
    ) -> None:
        if not isinstance(data, FedData):
            raise TypeError(
                f"data must be a FedData, got {type(data).__name__}; e.g. Federated(data=FedKeras(model, None), "
                "remotes=[...])"
            )
        if isinstance(remotes, (str, bytes)):
            raise TypeError(
                f"remotes must be a list of devices, got {type(remotes).__name__} {str(remotes)[:80]!r}; "
                "e.g. Federated(data, ['http://10.0.0.5:8000']) (a list, even of one URL)"
            )
        # A URL string is built by the transport registered for its scheme (fedsync.plugins).
        self.remotes: list[Remote] = [plugins.remote(r) if isinstance(r, str) else r for r in remotes]
        if not self.remotes:
            raise ValueError("Federated needs at least one remote, e.g. remotes=[Remote('http://127.0.0.1:8000')]")
        urls = [r.url for r in self.remotes]
        if len(set(urls)) != len(urls):
            raise ValueError(f"the same device is listed twice: {sorted({u for u in urls if urls.count(u) > 1})}")
        share = checked_share(fraction, devices_per_round, len(self.remotes))
        self.sampler: Sampler | None = checked_sampler(sampler)
        if empty_rounds not in EMPTY_ROUNDS:
            raise ValueError(f"empty_rounds must be 'fail' or 'keep', got {empty_rounds!r}")
        self.empty_rounds: str = empty_rounds
        self._evaluate_share: Fraction | None = None
        if evaluate_fraction is not None:
            self._evaluate_share = checked_share(evaluate_fraction, None, len(self.remotes))
        if min_results is not None and (not is_int(min_results) or not 1 <= min_results <= len(self.remotes)):
            raise ValueError(
                f"min_results must be an integer between 1 and the number of remotes ({len(self.remotes)}), got "
                f"{min_results!r}"
            )
        positive_seconds("timeout", timeout)
        self.data: FedData = data
        self.fraction: float = float(share)
        self._share: Fraction = share
        self.min_results: int | None = min_results
        self.timeout: float = float(timeout)
        if not is_number(poll) or not 0 < poll < math.inf:
            raise ValueError(f"poll must be a positive number of seconds, got {poll!r}; e.g. poll=10.0 (the default)")
        self.poll: float = float(poll)
        self.downloads: int | None = None if downloads is None else at_least_one("downloads", downloads)
        self.workers: int = int(at_least_one("workers", workers))
        if config is not None and not callable(config):
            round_config(config, 1)  # a bad dict fails here, not at the first round
        if evaluate_fn is not None and not callable(evaluate_fn):
            raise TypeError(
                "evaluate_fn must be a function evaluate_fn(model, server_round) -> metrics, got "
                f"{type(evaluate_fn).__name__}"
            )
        self.config: ConfigSource = config
        self.secure_aggregation: SecAgg | None = secure_rounds.checked(secure_aggregation, data)
        check_central_dp(data)  # BatchNorm's running statistics: refused before any round (docs/privacy.md)
        self.evaluate_fn: server_eval.EvaluateFn | None = evaluate_fn
        self.evaluate_fn_every: int = server_eval.checked_every(evaluate_fn_every)
        self.repetition: int = 0
        self.history: History = History()
        self.seed = seed  # each round's draw comes from it and the round's number (resumed runs sample alike)
        self._tries: tuple[int, int] = (0, 0)  # (round number, draws for it): a failed round retried draws anew
        self.evaluation_weights: dict[str, int] = {}  # each metric's weight in the last evaluate()
        self._handshakes: Handshakes = Handshakes()  # the devices whose handshake holds, and what each can do
        self._unrecorded: int = 0  # 1 while a merged round waits for _record: its evaluation names it
        self.checkpoint: Path | None = Path(checkpoint) if checkpoint is not None else None
        if self.checkpoint is not None:
            restored = checkpoint_io.load(self.checkpoint, data)
            if restored is not None:
                self.repetition, self.history = restored
                logger.info("resumed from %s: %d rounds done (rep %d)", checkpoint, len(self.history), self.repetition)
        self.device_states: Callable[[], checkpoint_io.DeviceStates] | None = None  # a simulation's, checkpointed
        self.history.run = self.history.run or run_record(seed)  # what a replay needs (coordinator/replay.py)
        self.dashboard: dashboard_app.Dashboard | None = (
            None if dashboard is None else dashboard_app.start(self, dashboard)
        )

    @property
    def share(self) -> Fraction:
        """``fraction`` as the exact fraction read from its decimal text (``0.14`` is 7/50), read-only."""
        return self._share

    # -- rounds --------------------------------------------------------------------

    def sample(self) -> list[Remote]:
        """The remotes taking part in the next round (reproducible with ``seed``): ``sampler``'s choice, if given.

        Raises:
            ValueError, TypeError: ``sampler`` answered unknown devices, duplicates or too few.
        """
        number = len(self.history) + 1
        self._tries = (number, self._tries[1] + 1 if self._tries[0] == number else 0)
        rng = round_rng(self.seed, number, self._tries[1])
        if self.sampler is not None:
            return chosen(self.sampler, number, self.remotes, rng, self.data, self.min_results or 1)
        return draw(self.remotes, self._share, self.min_results, rng)

    @stoppable(lambda self: f"round {len(self.history) + 1}")
    def round(self) -> RoundResult:
        """Run one synchronized round: handshake, send, train on devices, collect, merge.

        A misbehaving device is that device's failure, recorded by URL in
        ``RoundResult.failures``; the round merges if ``min_results`` devices
        answered. That covers a device that does not answer its handshake within
        half the round's remaining time (or its ``Remote.timeout``), answers
        malformed values, holds different specs than the coordinator (nothing is
        sent to it), or sends a bad reply.

        The deadline (``timeout`` seconds after the round starts) bounds every
        wait. A reply still arriving then is read on only while it keeps flowing
        (each read returns within ``transfer.STALL`` seconds) and within a grace
        period of ``min(10 s, 10% of timeout)``. A reply whose device answered in
        time but which waits for the merge (or a download slot) while another is
        read is bounded by itself: if its reading starts past the deadline, it has
        ``transfer.STALL`` seconds (or the rest of the grace period, if longer),
        ample for bytes that already arrived; so a reply trickling in just faster
        than the stall limit is the only one late. One that stalls is dropped and
        its device named late.

        Raises:
            SpecsMismatch: no reachable sampled device holds the coordinator's
                specs (a configuration error; nothing was sent).
            RoundFailed: too few devices answered, or the merge found the round
                unusable (every device reported 0 samples, a non-finite result);
                ``failures`` names each device and why. The FedData is unchanged.
        """
        result = self._train_round()
        self._evaluate_on_server(result)
        self._record(result)
        return result

    @stoppable(lambda self: evaluation_name(len(self.history) + self._unrecorded))
    def evaluate(self) -> EvaluationResult:
        """Evaluate the current global state on the sampled devices, without training.

        Devices need an ``evaluate`` callback; metrics are averaged by sample count.
        Under ``secure_aggregation`` the result (and the history) keeps only the
        aggregate: ``devices`` is empty. Evaluation answers are not masked, so the
        coordinator's process still receives each one (docs/privacy.md).
        The whole evaluation, handshake included, takes at most ``timeout`` seconds.

        A device that fails (unreachable, busy, another specs, no evaluate
        callback, a callback that raised, an invalid answer) is named in the
        result's ``failures``; the metrics come from the devices that answered.

        Raises:
            RoundFailed: no device answered with valid samples and metrics;
                ``failures`` names each device's reason (``SpecsMismatch: ...``,
                ``RemoteTimeout: ...``, ...).
        """
        started = time.monotonic()
        deadline = Deadline(
            started + self.timeout,
            expired=f"timed out: the evaluation's answer was still arriving after {self.timeout:g}s",
        )
        failures: dict[str, str] = {}
        share, least = (self._share, self.min_results) if self._evaluate_share is None else (self._evaluate_share, None)
        after = len(self.history) + self._unrecorded  # its own generator: training's draws stay as they were
        asked = draw(self.remotes, share, least, evaluation_rng(self.seed, after))
        remotes = self._handshakes.evaluating(self._handshake(asked, failures, deadline), failures)
        rep, what = max(self.repetition, 1), evaluation_name(len(self.history) + self._unrecorded)
        configs = self._round_configs(rep, remotes)
        specs, payload = self.data.specs(rep), self.data.serialize(rep)
        payloads = self._handshakes.payloads(self.data, remotes, rep)

        def evaluation(remote: Remote) -> Callable[[], Any]:
            """``remote``'s evaluation, its timeout read from the deadline when it starts."""
            return lambda: remote.evaluate(
                rep,
                payloads.get(remote.url, payload),
                specs,
                timeout=deadline.request_timeout(remote.timeout),
                deadline=deadline,
                config=configs[remote.url],
            )

        answers = concurrently(
            {r.url: evaluation(r) for r in remotes}, self.workers, wait=max(0.0, deadline.left()) + STALL
        )
        result = EvaluationResult(repetition=rep, failures=failures)
        for url, answer in answers.items():
            if isinstance(answer, RemoteError):
                result.failures[url] = failure_reason(answer)
            elif isinstance(answer, TimeoutError):
                result.failures[url] = f"RemoteTimeout: no evaluation answer within the timeout of {self.timeout:g}s"
            elif isinstance(answer, BaseException):
                result.failures[url] = failure_reason(answer)
            else:
                result.devices[url] = answer
        records = list(result.devices.values())
        result.samples = sum(r["samples"] for r in records)
        result.metrics = weighted_means(records)  # an aggregator's answer weighs each metric by its own weight
        self.evaluation_weights = metric_weights(records)
        result.devices = {url: {"samples": r["samples"], "metrics": r["metrics"]} for url, r in result.devices.items()}
        if self.secure_aggregation is not None:
            # Evaluation is not masked: keep only the aggregate, never per-device values (docs/privacy.md).
            result.devices = {}
        result.seconds = time.monotonic() - started
        scrub_failures(result.failures, self.remotes)
        scrub_result(result, self._scrub)  # metric names and strings a device sent (#22)
        if not records:
            raise RoundFailed(f"{what}: no device answered", result.failures)
        logger.info("%s: %s", what.capitalize(), format_metrics(result.metrics))
        return result

    @stoppable(lambda self, rounds, *_, **__: f"round {len(self.history) + 1} of {rounds}")
    def fit(
        self,
        rounds: int,
        *,
        evaluate_every: int = 0,
        callbacks: Sequence[Callable[[Federated, RoundResult], Any]] = (),
        progress: bool | None = None,
    ) -> History:
        """Run until ``rounds`` rounds have merged (counting those restored from a checkpoint).

        Args:
            rounds: the total number of rounds of the run.
            evaluate_every: run :meth:`evaluate` after every n-th round (0: never).
            callbacks: ``callback(federated, result)`` after each round; returning ``True``
                stops early (see :class:`~fedsync.coordinator.callbacks.EarlyStopping`).
            progress: show a progress bar; default: when stderr is a terminal.

        Returns:
            The :class:`History` of every round, also kept as ``federated.history``.

        Raises:
            SpecsMismatch, RoundFailed: as :meth:`round`.
        """
        if progress is None:
            progress = sys.stderr.isatty()
        if len(self.history) >= rounds:
            logger.warning(
                "nothing to run: %s already holds %d merged rounds and fit(%d) asks for %d in all; pass a larger "
                "number of rounds to continue, or another checkpoint folder to start over",
                *(self.checkpoint or "this coordinator", len(self.history), rounds, rounds),
            )
            return self.history
        if self.dashboard is not None or self.checkpoint is not None:
            dashboard_app.fit_started(self, rounds)  # the plan, for the dashboard and checkpoint watchers
        with tqdm(
            total=rounds, initial=min(len(self.history), rounds), disable=not progress, unit="round", desc="fedsync"
        ) as bar:
            while len(self.history) < rounds:
                result = self._train_round()
                if evaluate_every and (len(self.history) + 1) % evaluate_every == 0:
                    try:
                        result.evaluation = self.evaluate()
                    except RoundFailed as exc:  # the merged round is kept all the same
                        logger.warning("evaluation after round %d of %d failed: %s", len(self.history) + 1, rounds, exc)
                        result.evaluation = EvaluationResult(repetition=result.repetition, failures=exc.failures)
                self._evaluate_on_server(result)
                self._record(result)
                bar.update(1)
                shown = result.evaluation.metrics if result.evaluation else result.metrics
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(shown.items())[:3]}, refresh=False)
                for url, why in result.failures.items():  # visible on the console, not only in the history
                    logger.warning("round %d of %d: %s failed: %s", len(self.history), rounds, url, why)
                stop = [callback(self, result) for callback in callbacks]
                if any(s is True for s in stop):
                    who = ", ".join(type(c).__name__ for c, s in zip(callbacks, stop, strict=True) if s is True)
                    logger.warning(
                        "stopped early after round %d of %d: %s asked to stop", len(self.history), rounds, who
                    )
                    break
        return self.history

    # -- the round's parts -------------------------------------------------------------

    def _train_round(self) -> RoundResult:
        # A device may echo its token in any value it sends (an array name, a header):
        # no failure text, error, history or checkpoint may carry it.
        try:
            result = self._run_round()
        except RoundFailed as exc:
            scrubbed(exc, self.remotes)  # in place: the same exception goes on
            raise
        self._unrecorded = 1
        scrub_failures(result.failures, self.remotes)
        scrub_result(result, self._scrub)  # a metric named after the token (#22)
        metrics = getattr(self.data, "metrics", None)  # saved in the state file, sent in the next round
        if isinstance(metrics, dict):
            self.data.metrics = scrub_names(metrics, self._scrub)  # type: ignore[attr-defined]  # checked above
        return result

    def _scrub(self, text: str) -> str:
        """``text`` without any remote's credential."""
        for remote in self.remotes:
            text = remote.scrub(text)
        return text

    def _run_round(self) -> RoundResult:
        started = time.monotonic()
        deadline = Deadline(started + self.timeout, round_grace(self.timeout))
        failures: dict[str, str] = {}
        sampled = self.sample()
        needed = min(self.min_results or len(sampled), len(sampled))
        remotes = self._handshake(sampled, failures, deadline)
        rep = self.repetition + 1
        name = round_name(len(self.history) + 1, rep)  # as people count rounds; the repetition if it differs
        configs = self._round_configs(rep, remotes)  # a bad config raises here, before anything is sent
        self.repetition = rep  # devices that accepted rep refuse it again, whatever happens next
        result = RoundResult(repetition=rep, failures=failures)
        if len(remotes) < needed:
            # Lead with a device holding another architecture: the cause people can act on.
            cause = next((why for why in failures.values() if why.startswith("SpecsMismatch: ")), None)
            lead = f"{cause.removeprefix('SpecsMismatch: ')}\nSo " if cause else ""
            exc = BelowQuorum(f"{name}: {lead}only {len(remotes)} of {needed} required devices are reachable", failures)
            if self.empty_rounds == "keep":  # nothing was sent: the model as it was, the round recorded as empty
                return empty_round(result, exc, started)
            raise exc
        specs = self.data.specs(rep)
        payload = self.data.serialize(rep)
        record_sent(result, sampled, configs, payload)  # for a replay: who, with which config, what was sent
        secure, remotes = secure_rounds.start(  # its key phases, if on
            self.secure_aggregation,
            self.data,
            remotes,
            rep,
            deadline,
            result,
            workers=self.workers,
            timeout=self.timeout,
        )
        workers = Workers(min(self.workers, len(remotes)), name=f"fedsync-round-{rep}")
        state = Round(
            rep=rep,
            number=len(self.history) + 1,
            specs=specs,
            payload=payload,
            deadline=deadline,
            timeout=self.timeout,
            cancel=threading.Event(),
            slots=threading.Semaphore(self.downloads or (STREAMS if self.data.accepts_streams else self.workers)),
            budget=Budget(DOWNLOAD_BUDGET),
            arrivals=queue.Queue(),
            workers=workers,
            wait=self.poll if len(remotes) <= workers.size else min(self.poll, SHARED_POLL),
            payloads=self._handshakes.payloads(self.data, remotes, rep),  # the arrays as they are, to some devices
            views=self._handshakes.pending,
            whole=self._handshakes.whole,
            held=self._handshakes.held,
        )
        for remote in remotes:
            workers.submit(submit, self.data, state, remote, configs[remote.url])
        try:
            (self.data.merge if secure is None else secure.merge)(
                collect(state, remotes, needed, result, size(payload), self._handshakes.known), rep
            )
        except RoundFailed as exc:  # the merge found the round unusable: say who took part
            if isinstance(exc, (EmptyRound, BelowQuorum)) and self.empty_rounds == "keep":
                return empty_round(result, exc, started)  # the model as it was, the round recorded as empty
            message = exc.message if exc.message.startswith(f"{name} ") else f"{name}: {exc.message}"
            message = message.replace(f"{name}: round {rep}: ", f"{name}: ", 1)  # secure aggregation's own name
            kind = type(exc) if isinstance(exc, (EmptyRound, BelowQuorum)) else RoundFailed  # catchable as what it is
            raise kind(message, {**exc.failures, **result.failures}) from None
        except Exception as exc:
            if state.merging is None:  # not while folding a reply: the merge's own error
                raise
            # A reply the merge could not take (a FedData without ``check``): name its device.
            why = f"the merge raised {type(exc).__name__}: {str(exc)[:300]} on its reply"
            failures = {**result.failures, state.merging: why}
            raise RoundFailed(
                f"{name} failed: {why} ({state.merging}); the coordinator's data is unchanged", failures
            ) from exc
        finally:
            state.cancel.set()
            workers.close()
            close_waiting(state.arrivals)
        record_merge(result, getattr(self.data, "last_merge", None))  # with failures below aggregators, by path
        result.seconds = time.monotonic() - started
        return result

    def _round_configs(self, rep: int, remotes: list[Remote]) -> dict[str, Config]:
        """Each device's configuration for repetition ``rep`` (:func:`fedsync.wire.config.round_config`)."""
        strategy = getattr(self.data, "strategy", None)
        if per_device(self.config):
            return {r.url: round_config(self.config, rep, strategy, r.url) for r in remotes}
        config = round_config(self.config, rep, strategy)
        return {r.url: config for r in remotes}

    def _evaluate_on_server(self, result: RoundResult) -> None:
        """``evaluate_fn`` on the merged model after every ``evaluate_fn_every``-th round (counting restored ones)."""
        if self.evaluate_fn is not None and (number := len(self.history) + 1) % self.evaluate_fn_every == 0:
            run = server_eval.evaluate_on_server
            result.server_evaluation = run(self.evaluate_fn, self.data, result.repetition, number=number)

    def _record(self, result: RoundResult) -> None:
        result.privacy = coordinator_privacy(self)  # ε so far, under central DP (coordinator/_privacy.py)
        record_model(result, self.data)  # the merged state's digest, for a replay
        self.history.append(result)
        self._unrecorded = 0
        if self.checkpoint is not None:
            checkpoint_io.save(self.checkpoint, self.data, result.repetition, self.history, self.device_states)
        logger.info(
            "%s: %d device(s), %d failed, %s samples, %s, %.2fs",
            round_name(len(self.history), result.repetition),
            len(result.answered),
            len(result.failures),
            result.samples,
            format_metrics(result.metrics),
            result.seconds,
        )

    def _handshake(self, remotes: list[Remote], failures: dict[str, str], deadline: Deadline) -> list[Remote]:
        """The sampled ``remotes`` whose handshake holds (coordinator/_handshake.py); continues above them."""
        kept, self.repetition = self._handshakes.run(
            self.data,
            remotes,
            failures,
            deadline,
            repetition=self.repetition,
            workers=self.workers,
            secure_aggregation=self.secure_aggregation,
        )
        return kept

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Close every remote's connections, and the dashboard."""
        for remote in self.remotes:
            remote.close()
        if self.dashboard is not None:
            self.dashboard.close()

    def __enter__(self) -> Federated:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
