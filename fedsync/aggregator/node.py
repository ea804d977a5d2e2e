"""An aggregator: a device to its parent, and a coordinator of devices of its own (hierarchical FL).

One coordinator talking to thousands of sites is a bottleneck; NVIDIA FLARE's relays and FEDn's
combiners exist to remove it. In fedsync a node of the tree is an :class:`Aggregator`, a FedData that any
device serves as it serves a model (``fedsync.serve(Aggregator(...))``, listening or dialing out, or
``fedsync serve FILE:NAME --aggregate URL,...``). When the parent's model arrives, the aggregator runs one
:class:`~fedsync.Federated` round over its own devices and answers with their merge: the sample-weighted
mean of their weights, the **sum** of their sample counts, each metric's mean with its own weight (the
samples of the devices that reported it), and the devices below that failed, by path (``site-c``), which
the top coordinator records as ``agg-1/site-c``. It holds the model and the running sum of its round, never
a whole reply. For FedAvg a tree gives the model of the flat round over all leaves, to float rounding.

What composes through a tree, and why, is in docs/aggregators.md: FedAvg, and server optimizers (FedAdam,
FedYogi, FedAdagrad, FedAvgM) at the top; not medians, trimmed means or Krum (they need each device's own
reply), not central DP or secure aggregation across levels. Both ends refuse those, with the reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..coordinator.federated import WORKERS, Federated
from ..data.arrays import FedArrays
from ..errors import RoundFailed
from ..protocol import Encoding, FedData
from ..strategies import FedAvg
from ..transports.remote import Remote
from ..wire.config import Config
from ..wire.reports import node_name
from ..wire.transfer import within_parent

__all__ = ["Aggregator"]

logger = logging.getLogger("fedsync.aggregator")

MIN_ROUND = 0.5
"""The shortest round below, in seconds, an aggregator starts: with less left of the parent's, it fails at once."""

HISTORY = 100
"""Rounds below an aggregator whose results it keeps (``aggregator.federated.history``): memory stays bounded."""


class Aggregator(FedData):
    """A node of a tree: serves ``data`` to its parent, and merges a round of its ``remotes`` into it.

    Args:
        data: the model's declaration, as the coordinator holds it: a :class:`~fedsync.FedArrays` (or an
            adapter, ``FedTorch(model)``, ``FedKeras(model)``) **without** a ``train`` function, merged by
            plain :class:`~fedsync.FedAvg` (``exact=True`` or ``False``). The specs are ``data``'s: the
            parent and the devices below must hold the same declaration.
        remotes: the devices below, as for :class:`~fedsync.Federated`: URLs (``http(s)://``,
            ``dial://`` from this process's :class:`~fedsync.transports.dial.Listener`, ``local://``) or
            :class:`~fedsync.Remote` objects (with their tokens and certificates).
        timeout: the most seconds one round over the devices below takes, from the model's arrival to the
            merge (default 300). Keep it below the parent's ``Federated(timeout=...)`` minus the time the
            merged reply takes to upload, or the parent drops this aggregator as late.
        min_results: how many devices below must answer (default: all sampled); below it this
            aggregator answers its parent with a failure naming each device's reason.
        empty_rounds: when every device below reports 0 samples: ``"fail"`` (answer the parent with
            a failure that names them) or ``"keep"`` (answer an empty reply, 0 samples, which weighs
            nothing at the parent: use it under a parent run with ``empty_rounds="keep"``).
        fraction, seed, poll, downloads, workers: as :class:`~fedsync.Federated`'s, for the round below.

    The parent's per-round config (``Federated(config=...)``) is passed on to the devices below
    unchanged, and the parent's repetition numbers are used below when the devices allow it.

    Raises:
        TypeError: ``data`` is not an array FedData, or has a ``train`` function (an aggregator does not
            train: the devices below do).
        ValueError: ``data``'s strategy is not plain FedAvg (a median, Krum, central DP or a server
            optimizer cannot run inside a tree: docs/aggregators.md says why), or an argument of the
            round is out of range (as :class:`~fedsync.Federated`).
    """

    aggregates = True  # /info says so: a coordinator refuses what cannot merge merges (coordinator/_tree.py)
    accepts_views = True  # the payload goes to FedArrays, which reads any buffer

    def __init__(
        self,
        data: FedArrays,
        remotes: Sequence[Remote | str],
        *,
        timeout: float = 300.0,
        min_results: int | None = None,
        fraction: float = 1.0,
        seed: int | None = None,
        poll: float = 10.0,
        downloads: int | None = None,
        workers: int = WORKERS,
        empty_rounds: str = "fail",
    ) -> None:
        super().__init__()
        if not isinstance(data, FedArrays):
            raise TypeError(
                f"an Aggregator merges array models: data must be a FedArrays or an adapter (FedTorch, FedKeras), "
                f"got {type(data).__name__}"
            )
        if data.train is not None:
            raise TypeError(
                "an Aggregator does not train (the devices below it do): declare its data without a train "
                "function, as on the coordinator, e.g. Aggregator(FedTorch(model), remotes=[...])"
            )
        strategy = data.strategy
        if type(strategy) is not FedAvg:
            why = strategy.tree_refusal or "it steps the global model once per round, which the top coordinator does"
            raise ValueError(
                f"an Aggregator merges with plain FedAvg (exact or not), got {type(strategy).__name__}: {why}. "
                "Use FedAvg in aggregators, and a server optimizer such as FedAdam on the top coordinator "
                "(docs/aggregators.md)"
            )
        self.data = data
        self.declared = (data.updates, data.top_k)  # its own ask below; else it passes its parent's on
        self.timeout = timeout  # the round below's own; a parent's deadline may cut it (X-Fedsync-Deadline)
        self.federated = Federated(
            data,
            remotes,
            fraction=fraction,
            min_results=min_results,
            timeout=timeout,
            seed=seed,
            poll=poll,
            downloads=downloads,
            workers=workers,
            empty_rounds=empty_rounds,
        )

    # -- the parent's side: what a device does ----------------------------------------

    def specs(self, repetition: int) -> str:
        return self.data.specs(repetition)

    def summary(self, repetition: int) -> dict[str, Any] | None:
        return self.data.summary(repetition)

    def max_payload(self, repetition: int) -> int | None:
        return self.data.max_payload(repetition)

    def capabilities(self) -> dict[str, Any]:
        """What ``/info`` says: the wire formats ``data`` decodes (a parent compresses for it as for a device), and
        that it evaluates (over the devices below)."""
        return {**self.data.capabilities(), "evaluate": True}

    def check(self, encoding: Encoding, repetition: int) -> None:
        """The parent's payload, checked as the model's (names, shapes, dtypes, finite values)."""
        self.data.check(encoding, repetition)

    def receive(
        self, encoding: Encoding, repetition: int, config: Config | None = None, *, deadline: float | None = None
    ) -> None:
        """Load the parent's model, run one round over the devices below, and keep their merge.

        ``deadline``: the seconds left in the parent's round (its ``X-Fedsync-Deadline``). The round below
        then ends early enough for its merge to be ready within it: its timeout is the smaller of
        ``timeout`` and :func:`~fedsync.wire.transfer.within_parent` of it.

        Raises:
            RoundFailed: the round below failed (too few devices answered, every device reported 0
                samples, ...); its failures are named by path (``site-c``). The parent records this
                aggregator's failure with the message.
            PayloadRejected: the payload does not fit the model.
        """
        self.data.receive(encoding, repetition)  # no train: the arrays are the parent's model now
        federated = self.federated
        # The parent's numbering below, unless a device below already went past it (it then continues above).
        federated.repetition = max(federated.repetition, repetition - 1)
        federated.config = dict(config) if config else None
        self.data.failures_below = {}
        data = self.data
        # The parent's updates= ask (reply stc, topk, delta) goes on to the devices below, as the flat round asks
        # them; the aggregator replies their merge as its update. Its own declared ask wins below, as a device's does.
        data.updates, data.top_k = self.declared if self.declared[0] else data.asked
        try:
            with self._within(deadline):
                result = federated.round()
            if data.asked[0] is not None:  # the parent asked for updates: the merge as its update from the model
                data.reply_as_update()  # received, which the parent adds to its own (a delta download's distance kept)
        except RoundFailed as exc:
            below = self._paths(exc.failures)
            raise RoundFailed(
                f"the round over this aggregator's {len(federated.remotes)} device(s) failed: {exc.message}", below
            ) from None
        finally:
            data.updates, data.top_k = self.declared
        self.data.failures_below = self._paths(result.failures)
        if result.empty:  # empty_rounds="keep": an empty reply, weighing nothing at the parent
            self.data.samples, self.data.metrics, self.data.metric_weights = 0, {}, {}
        del federated.history.rounds[:-HISTORY]
        logger.info(
            "repetition %d: merged %d device(s) below, %s samples, %d failed",
            repetition,
            len(result.answered),
            result.samples,
            len(result.failures),
        )

    def serialize(self, repetition: int) -> Encoding:
        """The merge of the round below: weights, the sum of samples, metrics with their weights, failures below."""
        return self.data.serialize(repetition)

    def evaluate(
        self, encoding: Encoding, repetition: int, config: Config | None = None, *, deadline: float | None = None
    ) -> tuple[int, dict[str, float], dict[str, int]]:
        """Evaluate the parent's model on the devices below: their total samples, sample-weighted metrics,
        and each metric's own weight (the samples of the devices below that reported it).

        This aggregator's own model is restored after.

        Raises:
            RoundFailed: no device below answered the evaluation.
        """
        own = {name: a.copy() for name, a in self.data.get_arrays().items()}
        self.data.receive(encoding, repetition)
        federated = self.federated
        federated.config = dict(config) if config else None
        try:
            with self._within(deadline):
                result = federated.evaluate()
        except RoundFailed as exc:
            raise RoundFailed(
                f"no device below this aggregator answered: {exc.message}", self._paths(exc.failures)
            ) from None
        finally:
            self.data.set_arrays(own)
        return int(result.samples or 0), dict(result.metrics), dict(federated.evaluation_weights)

    def merge(self, encodings: Iterable[Any], repetition: int) -> None:
        raise TypeError(
            "an Aggregator is served as a device (fedsync.serve(aggregator)); a coordinator above it holds the "
            "model's declaration itself, e.g. Federated(FedTorch(model), remotes=[aggregator_url])"
        )

    def close(self) -> None:
        """Close the connections to the devices below."""
        self.federated.close()

    @contextlib.contextmanager
    def _within(self, deadline: float | None) -> Iterator[None]:
        """The round below's timeout cut to end within the parent's ``deadline`` (seconds left), for one round.

        Raises:
            RoundFailed: the parent's round leaves no time for a round below.
        """
        federated, own = self.federated, self.timeout
        timeout = within_parent(own, deadline)
        if deadline is not None and timeout < min(MIN_ROUND, own):
            raise RoundFailed(
                f"the parent's round has {deadline:.3g}s left, too little for a round below (it needs its grace "
                "period and the reply's upload too); give the parent's Federated(timeout=...) more time"
            )
        federated.timeout = timeout
        try:
            yield
        finally:
            federated.timeout = own

    # -- naming ----------------------------------------------------------------------

    def _paths(self, failures: Mapping[str, str]) -> dict[str, str]:
        """``failures`` by path below this aggregator: a device's name (``site-c``), or a deeper path as recorded."""
        urls = {remote.url for remote in self.federated.remotes}
        return {(node_name(key) if key in urls else key): why for key, why in failures.items()}
