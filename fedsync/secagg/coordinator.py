"""The coordinator's side of secure aggregation: the phases of one round, and the sum in the ring.

Bonawitz et al. 2017 (CCS), section 4. :func:`start` runs the keys, shares and inbox
phases on the devices that passed the handshake (``U1``, ``U2`` in the paper) before the
model is submitted; :meth:`SecureRound.merge` then takes the round's replies, each a
masked uint64 vector, and folds them into **one** uint64 accumulator as they stream in
(memory as FedAvg's: the accumulator and a 1 MiB piece), asks the survivors for the
shares that remove the masks, rebuilds every seed from at least ``t`` shares, checks each
against its commitment (SHA-256(b); the X25519 public key of ``s_sk``), removes the masks
chunk by chunk, and commits ``global + sum(n_k * update_k) / sum(n_k)`` through the
FedData's own merge (so its checks, its commit-at-end and server optimizers apply).

A device that reveals a false share is *detected* and its shares left out (the round
still completes when ``t`` honest shares remain); it cannot break privacy either, since
a seed is only used once it matches its commitment.

Devices served with ``peer_ca`` sign their keys (relayed as they are) and, after the
sum, their survivor list: when every participant signed, :meth:`SecureRound.merge` runs
the consistency phase (the paper's round 3) and relays the signatures in ``unmask``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from typing import Any, cast

import numpy as np

from .._util.workers import concurrently
from ..errors import RemoteTimeout, RoundFailed, failure_reason
from ..wire import codec
from ..wire.http import ErrorCode
from ..wire.metrics import MAX_SAMPLES
from ..wire.replies import ReplyStream
from ..wire.transfer import STALL, Deadline, round_grace
from . import keys as _keys
from .device import MASKED_KEY, MASKED_NAME, MASKED_VERSION, SIGNED_ENTRY
from .settings import MAX_DEVICES, MIN_THRESHOLD, PHASE_SHARE, SecAgg, threshold_range

__all__ = ["SecureRound", "start", "checked"]

logger = logging.getLogger("fedsync")

_PIECE = 1 << 20
_HEADER_LIMIT = 4096


def checked(settings: Any, data: Any) -> SecAgg | None:
    """``settings`` if secure aggregation can run with ``data``; else a clear error.

    Raises:
        TypeError: ``settings`` is not a :class:`SecAgg`, or ``data`` not an array FedData.
        ValueError: a strategy that needs each device's update, or a ``wire_dtype``.
    """
    if settings is None:
        return None
    if not isinstance(settings, SecAgg):
        raise TypeError(
            "secure_aggregation must be a fedsync.secagg.SecAgg, e.g. SecAgg(threshold=3), got "
            f"{type(settings).__name__}"
        )
    from ..data.arrays import FedArrays

    if not isinstance(data, FedArrays):
        raise TypeError(
            "secure aggregation sums array updates: data must be a FedArrays (or FedTorch, FedKeras), got "
            f"{type(data).__name__}"
        )
    if data.extra_arrays or not data.selection.everything or data.download:  # Scaffold, FedNova; shared=; deltas
        raise ValueError("secure aggregation masks whole models: not offered with Scaffold, FedNova, shared=, download")
    if data.strategy.accumulator(data.get_arrays()) is None:
        raise ValueError(
            f"secure aggregation gives the coordinator only the sum of the updates, but {type(data.strategy).__name__} "
            "needs each device's own update (median, trimmed mean, Krum, Bulyan, central DP clipping are "
            "incompatible); use FedAvg, FedAvgM, FedAdam, FedYogi or FedAdagrad, or local DP on the devices "
            "(fedsync.privacy.LocalDP)"
        )
    if data.wire_dtype is not None:
        raise ValueError(
            f"secure aggregation sends masked 64-bit integers, not wire_dtype {data.wire_dtype!r}; drop wire_dtype on "
            "both sides"
        )
    return settings


class SecureRound:
    """One round's secure aggregation, after its setup phases (:func:`start`)."""

    def __init__(self, settings: SecAgg, data: Any, rep: int, deadline: Deadline, result: Any, workers: int) -> None:
        self.settings, self.data, self.rep, self.deadline = settings, data, rep, deadline
        self.result, self.workers = result, workers
        self.ids: dict[str, int] = {}
        self.remotes: list[Any] = []
        self.by_id: dict[int, Any] = {}
        self.threshold = 0
        # U1: id -> c, s, commitment (bytes); signed, also signature, certificate (base64) and peer (identity.Peer)
        self.public: dict[int, dict[str, Any]] = {}
        self.participants: list[int] = []  # U2
        self.merging = False  # in the merge, Federated names the round and its failures itself
        self.grace = 0.0  # seconds the unmask phase gets past a deadline reached while collecting (set by start)

    # -- setup: keys, shares, inbox -------------------------------------------------

    def setup(self, remotes: list[Any]) -> None:
        count = len(remotes)
        if count > MAX_DEVICES:
            raise RoundFailed(
                f"round {self.rep}: secure aggregation takes at most {MAX_DEVICES} devices a round, {count} were "
                "sampled; lower fraction",
                self.result.failures,
            )
        self.threshold = self.settings.threshold_for(count)
        self.ids = {r.url: i + 1 for i, r in enumerate(remotes)}
        self.by_id = {i + 1: r for i, r in enumerate(remotes)}
        if count < self.threshold:
            self._fail(f"{count} device(s) reachable, fewer than the secure-aggregation threshold {self.threshold}")
        if self.threshold < threshold_range(count)[0]:  # the devices would refuse it: say why once, here
            self._fail(
                f"threshold {self.threshold} is not a majority of the {count} reachable devices (devices take t > n/2 "
                f"and t >= {MIN_THRESHOLD}, so no two disjoint groups of t can unmask one device); use SecAgg() (a "
                "majority) or a larger threshold"
            )
        try:
            bound = self.settings.bound(count)
        except ValueError as exc:
            raise RoundFailed(f"round {self.rep}: {exc}", self.result.failures) from None
        del bound
        s = self.settings
        answers = self._phase(
            "keys",
            {
                u: {
                    "devices": count,
                    "id": u,
                    "threshold": self.threshold,
                    "clip": s.clip,
                    "scale": s.scale,
                    "max_samples": s.max_samples,
                }
                for u in self.by_id
            },
        )
        for u, answer in answers.items():
            self._keep(u, answer, self._keys_answer)
        self._drop_repeated_keys()
        self._enough("the keys phase")
        table = {str(u): self._entry(p) for u, p in sorted(self.public.items())}
        answers = self._phase("shares", {u: {"keys": table} for u in self.public})
        sent: dict[int, dict[int, str]] = {}
        for u, answer in answers.items():
            shares = self._keep(u, answer, self._shares_answer)
            if shares is not None:
                sent[u] = shares
        self.participants = sorted(sent)
        self._enough("the shares phase", self.participants)
        ready = self._deliver(sent)
        # A participant that missed its inbox will not mask: it counts as dropped, and its s_sk is rebuilt.
        self.remotes = [self.by_id[u] for u in sorted(ready)]
        self._enough("the inbox phase", ready)

    def _deliver(self, sent: dict[int, dict[int, str]]) -> list[int]:
        """The inbox phase: the ids that kept their inbox. A sender whose shares some receiver
        cannot decrypt is dropped (:mod:`.disputes` decides between accuser and accused) and the
        inbox delivered again, with fewer participants, to those still in: bounded, each
        delivery after the first follows the drop of at least one participant."""
        from .disputes import resolve

        pending, ready = list(self.participants), []
        disputes: list[tuple[int, int]] = []
        while pending:
            inbox = {
                u: {
                    "participants": self.participants,
                    "shares": {str(v): sent[v][u] for v in self.participants if v != u},
                }
                for u in pending
            }
            accusations: dict[int, list[int]] = {}
            for u, answer in self._phase("inbox", inbox).items():
                senders = self._accused(u, answer)
                if senders:
                    accusations[u] = senders
                elif self._keep(u, answer, lambda u, a: True):
                    ready.append(u)
            if not accusations:
                return ready
            dropped, disputes = resolve(accusations, disputes)
            for u in dropped:
                self.result.failures[self.by_id[u].url] = self._blame(u, disputes)
            self.participants = [u for u in self.participants if u not in dropped]
            self._enough(
                "the inbox phase (after dropping the devices whose shares did not decrypt, or their accusers)",
                self.participants,
            )
            # Everyone still in gets the smaller list: those that kept the first inbox take it as a subset of it.
            pending, ready = [u for u in [*ready, *accusations] if u not in dropped], []
        return ready

    def _accused(self, u: int, answer: Any) -> list[int]:
        """The senders a ``secagg_bad_share`` refusal names, checked; ``[]`` for any other answer."""
        detail = getattr(answer, "detail", None) if isinstance(answer, BaseException) else None
        if not isinstance(detail, dict) or detail.get("error") != ErrorCode.SECAGG_BAD_SHARE:
            return []
        senders = detail.get("senders")
        others = set(self.participants) - {u}
        if (
            not isinstance(senders, list)
            or not senders
            or len(senders) > len(others)
            or not all(type(v) is int and v in others for v in senders)
            or len(set(senders)) != len(senders)
        ):
            return []  # a refusal without a usable list: that device's own failure (recorded by _keep)
        return sorted(senders)

    def _blame(self, u: int, disputes: list[tuple[int, int]]) -> str:
        accusers = sorted(a for a, s in disputes if s == u)
        accused = sorted(s for a, s in disputes if a == u)
        if len(accusers) >= len(accused):
            return (
                f"SecAggBadShare: device(s) {self._named(accusers)} could not decrypt the share(s) it sent them "
                "(AES-GCM fails); it was dropped before training and the others' inbox delivered again without it"
            )  # fmt: skip
        return (
            f"SecAggAccusation: it claimed the shares of {len(accused)} device(s) ({self._named(accused)}) do not "
            "decrypt, more disputes than any device it accused; it was dropped before training and its accusations "
            "set aside"
        )  # fmt: skip

    def _keys_answer(self, u: int, answer: Any) -> bool:
        if not isinstance(answer, dict) or set(answer) not in ({"c", "s", "commitment"}, SIGNED_ENTRY):
            raise ValueError(
                'the keys phase must answer {"c": base64, "s": base64, "commitment": base64}, signed: with '
                '"signature" and "certificate" too'
            )
        entry: dict[str, Any] = {k: _keys.unb64(answer[k], _keys.KEY_BYTES, k) for k in ("c", "s", "commitment")}
        for k in ("c", "s"):
            try:
                _keys.check_public(entry[k])
            except ValueError:
                raise ValueError(f"public key {k} is not a usable X25519 key") from None
        if "signature" in answer:
            entry.update(self._signed(u, entry, answer))
        self.public[u] = entry
        return True

    def _signed(self, u: int, entry: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        """A signed keys answer, checked as far as the coordinator can (it has no device CA): its
        signature must verify with its certificate's key, or every signed peer would refuse the table."""
        from .identity import MAX_CERTIFICATE, MAX_SIGNATURE, decode_b64, keys_message, peer_of_unverified

        signature = decode_b64(answer["signature"], MAX_SIGNATURE, "signature")
        der = decode_b64(answer["certificate"], MAX_CERTIFICATE, "certificate")
        peer = peer_of_unverified(der)
        if not peer.verifies(
            signature,
            keys_message(self.rep, u, len(self.by_id), self.threshold, entry["c"], entry["s"], entry["commitment"]),
        ):
            raise ValueError(
                f"the keys signature does not verify with its own certificate ({peer.name}); its peers would refuse it"
            )
        return {"signature": answer["signature"], "certificate": answer["certificate"], "peer": peer}

    @staticmethod
    def _entry(public: dict[str, Any]) -> dict[str, str]:
        entry = {"c": _keys.b64(public["c"]), "s": _keys.b64(public["s"])}
        if "signature" in public:  # relayed as signed: peers check it against their CA
            entry.update(
                commitment=_keys.b64(public["commitment"]),
                signature=public["signature"],
                certificate=public["certificate"],
            )
        return entry

    def _drop_repeated_keys(self) -> None:
        """Fail every device whose public key another device (or its other key) also answered.

        Keys are fresh per repetition, so a repeat is a replay or a copy; honest devices
        refuse a table that holds one (it would let one device decrypt another's shares).
        """
        holders: dict[bytes, list[int]] = {}
        for u, entry in self.public.items():
            for key in {entry["c"], entry["s"]}:
                holders.setdefault(key, []).append(u)
            if entry["c"] == entry["s"]:
                holders[entry["c"]].append(u)
        for u in sorted({u for ids in holders.values() if len(ids) > 1 for u in ids}):
            others = sorted({v for ids in holders.values() if u in ids and len(ids) > 1 for v in ids} - {u})
            also = f"device(s) {self._named(others)} answered it too" if others else "it answered it as both c and s"
            self.result.failures[self.by_id[u].url] = (
                f"RemoteError: the secure-aggregation keys phase answered a public key that is not fresh: {also}"
            )
            del self.public[u]

    def _shares_answer(self, u: int, answer: Any) -> dict[int, str]:
        shares = answer.get("shares") if isinstance(answer, dict) else None
        expected = {str(v) for v in self.public if v != u}
        if not isinstance(shares, dict) or set(shares) != expected:
            raise ValueError(
                f"the shares phase must answer one encrypted share for each other device {sorted(expected, key=int)}"
            )
        for v, text in shares.items():
            _keys.unb64(text, _keys.CIPHERTEXT_BYTES, f"shares[{v!r}]")
        return {int(v): text for v, text in shares.items()}

    # -- the sum ----------------------------------------------------------------------

    def merge(self, replies: Iterable[Any], rep: int) -> None:
        """Fold the masked replies, unmask their sum, and commit it through ``data.merge``.

        Raises:
            RoundFailed: fewer than ``t`` survivors or unmask answers, a seed that no ``t``
                shares rebuild, or a sum whose masks did not cancel; the data is unchanged.
        """
        self.merging = True
        layout = self.data.layout()
        from .masking import digit_width, length_of

        width = digit_width(self.settings.max_samples, len(self.by_id))  # the devices' n of the keys phase
        size = length_of(layout, width) + 1
        total = np.zeros(size, np.uint64)
        kept: list[ReplyStream] = []
        for reply in replies:
            if not isinstance(reply, ReplyStream):
                raise TypeError("secure aggregation reads replies as streams; this FedData must accept streams")
            try:
                self._fold(reply, total, size)
                kept.append(reply)
            except _Spoiled as exc:
                reply.reject(exc.reason)
                if exc.spoiled:  # part of it was added: start the sum over from the kept replies
                    total, kept = self._refold(kept, size)
            finally:
                reply.close()
            del reply
        survivors = sorted(self.ids[r.url] for r in kept)
        dropped = [u for u in self.participants if u not in survivors]
        if len(survivors) < self.threshold:
            self._fail(
                f"only {len(survivors)} masked result(s) arrived, fewer than the threshold {self.threshold}; dropped: "
                f"{self._named(dropped)}"
            )
        # Collection may end at the round's deadline (a device that never answered): the
        # survivors still get the round's grace period to reveal their shares.
        self.deadline = Deadline.within(max(self.deadline.left(), self.grace))
        bodies: dict[int, dict[str, Any]] = {u: {"survivors": survivors, "dropped": dropped} for u in survivors}
        if all("signature" in self.public[u] for u in self.participants):  # signed devices reveal only after round 3
            signatures = self._consistency(survivors)
            bodies = {int(u): {**bodies[int(u)], "signatures": signatures} for u in signatures}
        answers = self._phase("unmask", bodies)
        revealed = {
            u: a
            for u, a in (
                (u, self._keep(u, a, lambda u, a: self._unmask_answer(a, survivors, dropped)))
                for u, a in answers.items()
            )
            if a is not None
        }
        if len(revealed) < self.threshold:
            self._fail(
                f"only {len(revealed)} device(s) answered the unmask phase, fewer than the threshold {self.threshold}"
            )
        masks = self._masks(revealed, survivors, dropped)
        from .masking import apply_masks, decode_sum

        apply_masks(total, masks)
        try:
            merged, samples = decode_sum(
                total, layout, self.data.get_arrays(), self.settings.scale, self.settings.bound(len(survivors)), width
            )
        except ValueError as exc:
            self._fail(str(exc))
        del total
        from ..data.arrays import METRICS_KEY, SAMPLES_KEY, SPECS_KEY

        metadata = {SAMPLES_KEY: str(min(samples, MAX_SAMPLES)), METRICS_KEY: "{}", SPECS_KEY: self.data.specs(rep)}
        self.data.merge([codec.encode(merged, metadata)], rep)
        self.result.samples = samples
        logger.info(
            "round %d: securely aggregated %d device(s) (%d dropped), %d samples",
            rep,
            len(survivors),
            len(dropped),
            samples,
        )

    def _consistency(self, survivors: list[int]) -> dict[str, str]:
        """Bonawitz et al. 2017, round 3: every survivor signs the survivor list; the valid signatures, by id."""
        from .identity import MAX_SIGNATURE, decode_b64, survivors_message

        message = lambda u: survivors_message(self.rep, self.public[u]["s"], survivors)  # noqa: E731

        def check(u: int, answer: Any) -> str:
            text = answer.get("signature") if isinstance(answer, dict) and set(answer) == {"signature"} else None
            if not self.public[u]["peer"].verifies(decode_b64(text, MAX_SIGNATURE, "signature"), message(u)):
                raise ValueError("its consistency signature does not verify over the survivor list")
            return cast(str, text)  # decode_b64 refused anything but a base64 str

        answers = self._phase("consistency", {u: {"survivors": survivors} for u in survivors})
        signatures = {
            str(u): text
            for u, text in ((u, self._keep(u, a, check)) for u, a in sorted(answers.items()))
            if text is not None
        }
        if len(signatures) < self.threshold:
            self._fail(
                f"only {len(signatures)} survivor(s) signed the survivor list in the consistency phase, fewer than the "
                f"threshold {self.threshold}"
            )
        return signatures

    def _fold(self, reply: ReplyStream, total: np.ndarray, size: int) -> None:
        folded = False
        try:
            header = codec.read_header(reply.readinto, reply.length, limit=_HEADER_LIMIT)
            tensors = header.tensors
            if (
                len(tensors) != 1 or tensors[0].name != MASKED_NAME or tensors[0].dtype != np.dtype("<u8")
                or tensors[0].shape != (size,) or header.metadata.get(MASKED_KEY) != MASKED_VERSION
            ):  # fmt: skip
                shown = [(t.name[:40], t.dtype.name, t.shape[:4]) for t in tensors[:3]]
                raise ValueError(
                    f"not a masked reply: expected one uint64 array {MASKED_NAME!r} of {size} elements and metadata "
                    f"{MASKED_KEY!r}: {MASKED_VERSION!r} (a device of another fedsync version?), got {shown}"
                )
            buffer = np.empty(_PIECE, np.uint8).data  # a memoryview of it
            for _, first, values in codec.read_pieces(reply.readinto, header, buffer):
                folded = True
                part = total[first : first + values.size]
                np.add(part, values, out=part)
        except Exception as exc:  # a codec error, a lost connection: this device's failure alone
            raise _Spoiled(failure_reason(exc) if not isinstance(exc, ValueError) else str(exc), folded) from None

    def _refold(self, kept: list[ReplyStream], size: int) -> tuple[np.ndarray, list[ReplyStream]]:
        while True:  # bounded: each pass keeps every reply or drops one
            total = np.zeros(size, np.uint64)
            for index, reply in enumerate(kept):
                try:
                    self._fold(reply.reopen(), total, size)
                except Exception as exc:
                    reply.reject(f"when read again: {getattr(exc, 'reason', exc)}")
                    kept = kept[:index] + kept[index + 1 :]
                    break
            else:
                return total, kept

    def _unmask_answer(self, answer: Any, survivors: list[int], dropped: list[int]) -> dict[str, dict[int, bytes]]:
        if (
            not isinstance(answer, dict)
            or set(answer) != {"b", "s"}
            or not all(isinstance(answer[k], dict) for k in "bs")
        ):
            raise ValueError('the unmask phase must answer {"b": {id: base64}, "s": {id: base64}}')
        if set(answer["b"]) != {str(u) for u in survivors} or set(answer["s"]) != {str(v) for v in dropped}:
            raise ValueError(
                "the unmask phase must answer a share of b for each survivor and of s_sk for each dropped device"
            )
        return {k: {int(i): _keys.unb64(t, _keys.KEY_BYTES, f"{k}[{i!r}]") for i, t in answer[k].items()} for k in "bs"}

    def _masks(
        self, revealed: dict[int, dict[str, dict[int, bytes]]], survivors: list[int], dropped: list[int]
    ) -> list[tuple[bytes, int]]:
        """The masks to subtract: each survivor's PRG(b), and each survivor's pairwise mask with each dropped device."""
        from . import shamir

        liars: dict[int, str] = {}
        masks: list[tuple[bytes, int]] = []

        def rebuild(owner: int, kind: str, check: Any) -> bytes:
            if self.deadline.left() <= 0:  # CPU-bound, but a round never runs on past its time
                self._fail(
                    f"rebuilding the masks of {len(survivors)} survivor(s) and {len(dropped)} dropped device(s) took "
                    "past the round's time; sample fewer devices a round (fraction) or give the round a longer timeout"
                )
            shares = {r: answer[kind][owner] for r, answer in revealed.items()}
            try:
                secret, false = shamir.recover(shares, self.threshold, check, seed=self.rep, suspects=liars)
            except shamir.Unrecoverable as exc:
                self._fail(
                    f"cannot rebuild device {owner}'s {'self-mask seed b' if kind == 'b' else 'mask key s_sk'}: {exc}"
                )
            for r in false:
                liars[r] = f"revealed a false share of device {owner}'s {kind} (it fails the commitment)"
            return secret

        for u in survivors:
            b = rebuild(u, "b", lambda secret, u=u: _keys.commitment(secret) == self.public[u]["commitment"])
            masks.append((_keys.derive(b, "self", self.rep), -1))
        for v in dropped:
            s_sk = rebuild(v, "s", lambda secret, v=v: _keys.KeyPair.from_secret(secret).public == self.public[v]["s"])
            pair = _keys.KeyPair.from_secret(s_sk)
            for u in survivors:
                masks.append((_keys.agree(pair, self.public[u]["s"], "mask", self.rep), -1 if u < v else 1))
        for r, why in liars.items():
            url = self.by_id[r].url
            self.result.failures[url] = (
                f"SecAggFalseShare: {why}; its shares were left out (its own update is in the sum)"
            )
            logger.warning("round %d: %s %s", self.rep, url, why)
        return masks

    # -- plumbing ---------------------------------------------------------------------

    def _phase(self, phase: str, bodies: dict[int, Any]) -> dict[int, Any]:
        """POST ``{rep}/secagg/{phase}`` to each device, concurrently; answers or exceptions by id.

        Each call waits at most ``min(remote.timeout, PHASE_SHARE[phase] * time left)``, as the
        handshake does: a device that never answers is dropped and the round goes on.
        """
        left = max(0.0, PHASE_SHARE[phase] * self.deadline.left())
        end = Deadline.within(left)

        def call(u: int) -> Any:
            remote = self.by_id[u]
            wait = min(remote.timeout, end.left())
            if wait <= 0:
                raise RemoteTimeout(
                    remote.url, f"the round's deadline passed before the secure-aggregation {phase} phase"
                )
            if not hasattr(remote, "post_json"):
                raise TypeError(f"its transport ({type(remote).__name__}) does not carry secure aggregation's phases")
            body = json.dumps(bodies[u]).encode("utf-8")
            return remote.post_json(
                f"/{self.rep}/secagg/{phase}", body, deadline=Deadline.within(wait),
                what=f"the secure-aggregation {phase} phase", timeout=wait,
            )  # fmt: skip

        answers = concurrently(
            {str(u): functools.partial(call, u) for u in bodies}, self.workers, wait=max(0.0, left) + STALL
        )
        return {int(k): v for k, v in answers.items()}

    def _keep(self, u: int, answer: Any, check: Any) -> Any:
        """``check(u, answer)``'s value, or ``None`` with the device's failure recorded."""
        url = self.by_id[u].url
        if isinstance(answer, TimeoutError) and not isinstance(answer, RemoteTimeout):
            self.result.failures[url] = "RemoteTimeout: no answer in a secure-aggregation phase within its time"
            return None
        if isinstance(answer, BaseException):
            self.result.failures[url] = failure_reason(answer)
            return None
        try:
            return check(u, answer)
        except ValueError as exc:
            self.result.failures[url] = f"RemoteError: {exc}"
            return None

    def _enough(self, phase: str, ids: Iterable[int] | None = None) -> None:
        count = len(list(self.public) if ids is None else list(ids))
        if count < self.threshold:
            self._fail(
                f"only {count} device(s) completed {phase}, fewer than the secure-aggregation threshold "
                f"{self.threshold}"
            )

    def _named(self, ids: list[int]) -> str:
        return ", ".join(self.by_id[u].url for u in ids) or "none"

    def _fail(self, why: str) -> None:
        if self.merging:  # Federated's round adds "round N" and every failure to what the merge raises
            raise RoundFailed(f"secure aggregation failed: {why}; the coordinator's data is unchanged")
        raise RoundFailed(
            f"round {self.rep} failed: {why}; the coordinator's data is unchanged", dict(self.result.failures)
        )


class _Spoiled(Exception):
    def __init__(self, reason: str, spoiled: bool) -> None:
        super().__init__(reason)
        self.reason, self.spoiled = reason, spoiled


def start(
    settings: SecAgg | None,
    data: Any,
    remotes: list[Any],
    rep: int,
    deadline: Deadline,
    result: Any,
    *,
    workers: int,
    timeout: float,
) -> tuple[SecureRound | None, list[Any]]:
    """Run the keys, shares and inbox phases: the round, and the devices to submit to (``(None, remotes)`` when off).

    ``data`` is the coordinator's FedArrays, ``remotes`` the devices that passed the handshake, ``result`` the
    round's RoundResult (failures go in it), ``workers`` the most calls at once, ``timeout`` the round's, in seconds.

    Raises:
        RoundFailed: fewer than the threshold completed a phase, or the overflow bound fails.
    """
    if settings is None:
        return None, remotes
    secure = SecureRound(settings, data, rep, deadline, result, workers)
    secure.grace = round_grace(timeout)
    secure.setup(remotes)
    return secure, secure.remotes
