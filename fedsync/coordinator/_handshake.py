"""The handshake of a round, and what the coordinator negotiates from each device's ``/info``.

A device not yet known is asked for ``/info``; its specs must equal the coordinator's, and what it says it can
do (``capabilities``: the wire formats it decodes, evaluate, secure aggregation; docs/protocol.md) decides what
it is sent: the coordinator's ``wire_dtype`` to a device that decodes it, the arrays as they are to one that
does not (a device of another language, an older fedsync), and nothing when the round needs what the device
cannot do (secure aggregation, an evaluation), which is then that device's failure, named.

Internal: part of :class:`fedsync.Federated`; its names may change without notice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._util.workers import concurrently
from ..errors import RemoteTimeout, SpecsMismatch, failure_reason
from ..protocol import MAX_REPETITION, Encoding, FedData
from ..transports.remote import Remote
from ..wire.transfer import Deadline
from ._round import mismatch_message
from ._tree import tree_refusal

__all__ = ["Handshakes", "HANDSHAKE_SHARE"]

HANDSHAKE_SHARE = 0.5
"""The most of a round's remaining time the handshake may take."""


class Handshakes:
    """The devices whose handshake holds (a round asks only the others for ``/info``), and their capabilities."""

    def __init__(self) -> None:
        self.known: set[str] = set()
        self.capabilities: dict[str, dict[str, Any]] = {}
        """What each known device's ``/info`` said it can do (``{}``: it said nothing, an older or foreign device)."""
        self.held: dict[str, str] = {}
        """The view each device holds, as far as the coordinator knows (``download="delta"``)."""
        self.pending: dict[str, str] = {}
        """The view each device of this round will hold once its payload is accepted."""
        self.whole: tuple[Encoding, str] | None = None
        """This round's whole model with a view to keep, for a device that answers ``unknown_base``."""

    def run(
        self,
        data: FedData,
        remotes: list[Remote],
        failures: dict[str, str],
        deadline: Deadline,
        *,
        repetition: int,
        workers: int,
        secure_aggregation: Any,
    ) -> tuple[list[Remote], int]:
        """Ask devices not yet known for ``/info``; check specs and capabilities before anything is sent.

        Returns the remotes that may take part, and the repetition to continue above (the highest a
        matching device accepted, or ``repetition``). Each handshake waits at most
        ``min(remote.timeout, HANDSHAKE_SHARE * time left)``; a device that does not answer in time,
        answers badly, holds other specs or cannot do what the round needs is that device's failure.

        Raises:
            SpecsMismatch: no reachable sampled device holds the coordinator's specs.
        """
        unknown = [r for r in remotes if r.url not in self.known]
        left = max(0.0, deadline.left())
        limits = {r.url: max(0.05, min(r.timeout, HANDSHAKE_SHARE * left)) for r in unknown}

        def handshake(remote: Remote) -> Callable[[], Any]:
            """``remote``'s ``/info``, its deadline starting when the call does."""
            return lambda: remote.info(deadline=Deadline.within(limits[remote.url]))

        infos = concurrently(
            {r.url: handshake(r) for r in unknown}, workers, wait=max(limits.values(), default=0.0) + 0.2
        )
        answered: dict[str, dict[str, Any]] = {}
        for remote in unknown:
            info = infos[remote.url]
            if isinstance(info, (RemoteTimeout, TimeoutError)):
                failures[remote.url] = f"RemoteTimeout: did not answer the handshake within {limits[remote.url]:.3g}s"
            elif isinstance(info, BaseException):
                failures[remote.url] = failure_reason(info)
            elif info.get("repetition", 0) >= MAX_REPETITION:
                failures[remote.url] = (
                    f"RemoteError: reports repetition {info['repetition']}, the last allowed (2**53): it accepts "
                    "no further round"
                )
            else:
                answered[remote.url] = dict(info)
        highest = max((int(i.get("repetition", 0)) for i in answered.values()), default=0)
        expected = data.specs(max(repetition, highest) + 1)
        mismatches: dict[str, str] = {}
        for remote in unknown:
            info = answered.get(remote.url)
            if info is None:
                continue
            if info["specs"] != expected:
                summary = data.summary(max(repetition, highest) + 1)
                mismatches[remote.url] = remote.scrub(mismatch_message(remote.url, expected, info, summary))
            elif refused := tree_refusal(remote.url, info, data, secure_aggregation) or _unable(
                remote.url, capabilities_of(info), secure_aggregation
            ):
                failures[remote.url] = refused  # e.g. FedMedian over an aggregator (docs/aggregators.md)
            else:
                self.known.add(remote.url)
                self.capabilities[remote.url] = capabilities_of(info)
        if mismatches and not any(r.url in self.known for r in remotes):
            raise SpecsMismatch("\n".join(mismatches.values()))
        failures.update({url: f"SpecsMismatch: {message}" for url, message in mismatches.items()})
        # Continue above every repetition a matching device already accepted.
        matching = [
            int(answered[r.url].get("repetition", 0)) for r in unknown if r.url in self.known and r.url in answered
        ]
        return [r for r in remotes if r.url in self.known], max([repetition, *matching])

    def payloads(self, data: FedData, remotes: list[Remote], repetition: int) -> dict[str, Encoding]:
        """Each device's payload when it is not the round's: the arrays as they are, or the model as a delta.

        A device that cannot decode the coordinator's ``wire_dtype`` gets the arrays as they are (views, no
        copy: only the bytes of a larger payload). With ``download="delta"`` (or ``"stc"``), a device that
        decodes ``delta`` gets the model as a difference from the view it holds, or whole with a view to keep
        (:mod:`fedsync.data._views`); ``pending`` says which view each will hold.
        """
        wire = getattr(data, "wire_dtype", None)
        plain = [r.url for r in remotes if wire is not None and wire not in self.wire_formats(r.url)]
        out: dict[str, Encoding] = {}
        if plain:
            payload = data.serialize_as(repetition, None)  # type: ignore[attr-defined]  # an array FedData
            out = dict.fromkeys(plain, payload)
        self.pending, self.whole = {}, None
        fed: Any = data  # an array FedData when it has download="delta"
        if getattr(fed, "download", None) in ("delta", "stc"):
            made: dict[tuple[str | None, str | None], tuple[Encoding, str]] = {}
            for remote in remotes:
                formats = self.wire_formats(remote.url)
                if remote.url in out or "delta" not in formats:
                    continue
                base = self.held.get(remote.url)
                base = base if base in fed.views.kept else None  # forgotten: whole, one payload
                sparse = fed.views.sparse_as(fed, formats)
                if (base, sparse) not in made:
                    made[base, sparse] = fed.views.payload(fed, base, repetition, sparse)
                out[remote.url], self.pending[remote.url] = made[base, sparse]
            if any(base is not None for base, _ in made):  # one may have lost its view: the whole model, made now
                if (None, None) not in made:
                    made[None, None] = fed.views.payload(fed, None, repetition, None)
                self.whole = made[None, None]
        return out

    def wire_formats(self, url: str) -> list[str]:
        """The wire formats device ``url`` said it decodes (none when it said nothing)."""
        formats = self.capabilities.get(url, {}).get("wire_formats")
        return [f for f in formats if isinstance(f, str)] if isinstance(formats, list) else []

    def evaluating(self, remotes: list[Remote], failures: dict[str, str]) -> list[Remote]:
        """``remotes`` without those whose ``/info`` said they do not evaluate (each named in ``failures``)."""
        kept = []
        for remote in remotes:
            if self.capabilities.get(remote.url, {}).get("evaluate") is False:
                failures[remote.url] = (
                    "NotSupported: its /info says it does not evaluate (its FedData has no evaluate callback); "
                    "nothing was sent"
                )
            else:
                kept.append(remote)
        return kept

    def forget(self, url: str) -> None:
        """Ask ``url`` for ``/info`` again next round (it failed: it may have restarted, or changed)."""
        self.known.discard(url)
        self.capabilities.pop(url, None)
        self.held.pop(url, None)


def capabilities_of(info: dict[str, Any]) -> dict[str, Any]:
    """``info["capabilities"]`` when it is a JSON object, else ``{}`` (a device that says nothing of them)."""
    capabilities = info.get("capabilities")
    return capabilities if isinstance(capabilities, dict) else {}


def _unable(url: str, capabilities: dict[str, Any], secure_aggregation: Any) -> str | None:
    """Why device ``url`` cannot take part in a round that needs what its ``capabilities`` deny; ``None`` if it can."""
    if secure_aggregation is not None and capabilities.get("secure_aggregation") is False:
        return (
            f"NotSupported: {url} says in its /info that it cannot do secure aggregation (an array FedData and "
            "pip install 'fedsync[secagg]' on the device); nothing was sent"
        )
    return None
