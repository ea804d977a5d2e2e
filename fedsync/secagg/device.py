"""The device's side of secure aggregation: one :class:`Session` per repetition, answering the phases.

Bonawitz et al. 2017 (CCS), section 4, rounds 0-4, as routes under a FedData's base
(docs/protocol.md, "Secure aggregation"):

- ``POST {base}/{rep}/secagg/keys``: fresh key pairs ``c`` and ``s`` and self-mask seed
  ``b``; answers the public keys and SHA-256(b);
- ``POST {base}/{rep}/secagg/shares``: every participant's public keys; answers, for
  each peer, Shamir shares of ``b`` and ``s_sk`` encrypted to it;
- ``POST {base}/{rep}/secagg/inbox``: the devices still taking part and the shares
  they sent this device; after it, ``submit`` trains and the result is *masked*;
- ``POST {base}/{rep}/secagg/consistency`` (signed rounds, round 3 ConsistencyCheck): the
  survivors; answers this device's signature over them, one list per repetition;
- ``POST {base}/{rep}/secagg/unmask``: the survivors and the dropped (and, signed, at least
  ``t`` survivors' signatures over the list this device signed); answers shares
  of ``b`` for survivors and of ``s_sk`` for the dropped, never both for one device.

A device served with ``peer_ca`` (:mod:`.identity`) signs its keys and survivor list and
believes only certified, signed peers: the active-adversary variant.

Every body is checked before use (sizes, types, counts); a refusal is a 4xx JSON
error and changes nothing. Phases run strictly in order, once each.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from typing import Any

import numpy as np

from .._util.checks import is_int
from ..wire.codec import Payload, encode_payload
from ..wire.http import ApiError, ErrorCode, json_response
from . import keys as _keys
from ._bodies import bounded_int, device_id, id_list, malformed, member, parsed, unb64
from .settings import MAX_DEVICES, MAX_SCALE, MIN_THRESHOLD, checked_bound, checked_clip, threshold_range

__all__ = [
    "Session",
    "BadShares",
    "answer",
    "supported",
    "session_for_submit",
    "MASKED_NAME",
    "MASKED_KEY",
    "MASKED_VERSION",
    "MAX_BODY",
    "SIGNED_ENTRY",
]

MAX_BODY = 1 << 20
"""The largest phase request body, in bytes (n = MAX_DEVICES fits with room)."""
MASKED_NAME = "secagg"
"""The one tensor of a masked reply: uint64, shape ``[length_of(layout, width) + 1]`` (:mod:`.masking`)."""
MASKED_KEY = "fedsync.secagg"
"""Metadata key of a masked reply; its value is :data:`MASKED_VERSION`."""
MASKED_VERSION = "v2"
"""v2: integer and boolean arrays travel as exact digits (:mod:`.masking`); v1 clipped and scaled them."""
SIGNED_ENTRY = {"c", "s", "commitment", "signature", "certificate"}
"""A signed peer's entry in the shares phase's key table."""


class Session:
    """One repetition's secrets and progress on a device (one at a time per FedData)."""

    def __init__(
        self,
        rep: int,
        me: int,
        devices: int,
        threshold: int,
        clip: float,
        scale: int,
        max_samples: int,
        identity: Any = None,
    ) -> None:
        self.rep, self.me, self.devices, self.threshold = rep, me, devices, threshold
        self.clip, self.scale, self.max_samples = clip, scale, max_samples
        self.c = _keys.KeyPair()
        self.s = _keys.KeyPair()
        self.b = os.urandom(_keys.KEY_BYTES)
        self.stage = "keys"
        self.public: dict[int, tuple[bytes, bytes]] = {}  # U1: id -> (c_pk, s_pk)
        self.held: dict[int, tuple[bytes, bytes]] = {}  # id -> (share of its b, share of its s_sk), ours included
        self.participants: list[int] = []  # U2
        self.revealed: dict[int, str] = {}  # id -> "b" or "s"
        self.identity = identity  # fedsync.secagg.identity.Identity: sign, and believe only signed peers
        self.peers: dict[int, Any] = {}  # id -> its verified identity.Peer (signed rounds)
        self.signed: list[int] | None = None  # the one survivor list this device signed
        self.lock = threading.Lock()

    # -- phases -------------------------------------------------------------------

    def keys_answer(self) -> dict[str, Any]:
        answer = {
            "c": _keys.b64(self.c.public),
            "s": _keys.b64(self.s.public),
            "commitment": _keys.b64(_keys.commitment(self.b)),
        }
        if self.identity is not None:
            message = self._keys_message(self.me, self.c.public, self.s.public, _keys.commitment(self.b))
            answer["signature"] = _keys.b64(self.identity.sign(message))
            answer["certificate"] = _keys.b64(self.identity.certificate_der)
        return answer

    def _keys_message(self, peer: int, c_public: bytes, s_public: bytes, commitment: bytes) -> bytes:
        from .identity import keys_message

        # This device's own n and t: a peer told other ones signed other bytes, and is refused.
        return keys_message(self.rep, peer, self.devices, self.threshold, c_public, s_public, commitment)

    def shares(self, body: Any) -> dict[str, Any]:
        table = member(body, "keys", dict)
        if not self.threshold <= len(table) <= self.devices:
            raise malformed(
                f"keys lists {len(table)} devices; expected {self.threshold} (the threshold) to {self.devices}"
            )
        public: dict[int, tuple[bytes, bytes]] = {}
        signed: dict[int, dict[str, Any]] = {}
        for name, entry in table.items():
            peer = device_id(name, self.devices, "keys")
            if not isinstance(entry, dict) or set(entry) not in ({"c", "s"}, SIGNED_ENTRY):
                raise malformed(
                    f'keys[{name!r}] must be an object {{"c": base64, "s": base64}}, signed: with "commitment", '
                    '"signature", "certificate" too'
                )
            public[peer] = (
                unb64(entry["c"], _keys.KEY_BYTES, f"keys[{name!r}].c"),
                unb64(entry["s"], _keys.KEY_BYTES, f"keys[{name!r}].s"),
            )
            if set(entry) == SIGNED_ENTRY:
                signed[peer] = entry
        if public.get(self.me) != (self.c.public, self.s.public):
            raise ApiError(
                400,
                ErrorCode.SECAGG_BAD_KEYS,
                f"keys must list this device ({self.me}) with the public keys it answered in the keys phase",
            )
        peers = self._verified(public, signed) if self.identity is not None else {}
        every = [key for pair in public.values() for key in pair]
        if len(set(every)) != len(
            every
        ):  # fresh keys never repeat (Bonawitz et al. 2017, round 1): a repeat is a replay or a forgery
            raise ApiError(
                400,
                ErrorCode.SECAGG_BAD_KEYS,
                "keys lists one public key twice (for two devices, or as both c and s); every device's keys are fresh "
                "and distinct",
            )
        for peer, (_, s_public) in public.items():  # checked now: masking uses them only after training
            if peer != self.me:
                try:
                    _keys.agree(self.s, s_public, "mask", self.rep)
                except ValueError:
                    raise ApiError(
                        400, ErrorCode.SECAGG_BAD_KEYS, f"device {peer}'s public key s is not a usable X25519 key"
                    ) from None
        b_shares = _split(self.b, self.threshold, self.devices)
        s_shares = _split(self.s.secret(), self.threshold, self.devices)
        out: dict[str, str] = {}
        for peer, (c_public, _) in sorted(public.items()):
            if peer == self.me:
                continue
            try:
                key = _keys.agree(self.c, c_public, "share", self.rep)
            except ValueError:
                raise ApiError(
                    400, ErrorCode.SECAGG_BAD_KEYS, f"device {peer}'s public key c is not a usable X25519 key"
                ) from None
            blob = _keys.encrypt_share(key, self.rep, self.me, peer, b_shares[peer] + s_shares[peer])
            out[str(peer)] = _keys.b64(blob)
        self.public, self.peers = public, peers
        self.held = {self.me: (b_shares[self.me], s_shares[self.me])}
        self.stage = "shares"
        return {"shares": out}

    def _verified(self, public: dict[int, tuple[bytes, bytes]], signed: dict[int, dict[str, Any]]) -> dict[int, Any]:
        """Each peer's certificate checked against the peer CA, and its keys signature.

        Bonawitz et al. 2017, round 1, the active-adversary variant.
        """
        from .identity import MAX_CERTIFICATE, MAX_SIGNATURE, decode_b64

        unsigned = sorted(set(public) - set(signed))
        if unsigned:
            raise ApiError(
                400,
                ErrorCode.SECAGG_UNSIGNED_PEER,
                f"device(s) {unsigned} sent unsigned keys; this device takes only keys signed with a device "
                "certificate of its peer CA (serve peer_ca on every device)",
            )
        peers: dict[int, Any] = {}
        for peer, entry in sorted(signed.items()):
            try:
                commitment = _keys.unb64(entry["commitment"], _keys.KEY_BYTES, f"keys[{str(peer)!r}].commitment")
                signature = decode_b64(entry["signature"], MAX_SIGNATURE, f"keys[{str(peer)!r}].signature")
                der = decode_b64(entry["certificate"], MAX_CERTIFICATE, f"keys[{str(peer)!r}].certificate")
            except ValueError as exc:
                raise malformed(str(exc)) from None
            if peer == self.me:
                if commitment != _keys.commitment(self.b) or der != self.identity.certificate_der:
                    raise ApiError(
                        400,
                        ErrorCode.SECAGG_BAD_KEYS,
                        f"keys must list this device ({self.me}) with the commitment and certificate it answered",
                    )
                peers[peer] = self.identity.me
                continue
            try:
                certified = self.identity.verify_peer(der)
            except ValueError as exc:
                raise ApiError(
                    400, ErrorCode.SECAGG_BAD_CERTIFICATE, f"device {peer}'s certificate is refused: {exc}"
                ) from None
            if not certified.verifies(signature, self._keys_message(peer, *public[peer], commitment)):
                raise ApiError(
                    400, ErrorCode.SECAGG_BAD_SIGNATURE,
                    f"device {peer}'s keys signature ({certified.name}) does not verify over repetition {self.rep}, n "
                    f"= {self.devices}, t = {self.threshold} and its keys: the keys were changed in transit, or the "
                    "device was told another n or t",
                )  # fmt: skip
            peers[peer] = certified
        holders: dict[bytes, int] = {}
        for peer, certified in sorted(peers.items()):
            other = holders.setdefault(certified.key_bytes(), peer)
            if other != peer:  # one certified key is one device; a device signs one id per repetition
                raise ApiError(
                    400,
                    ErrorCode.SECAGG_BAD_CERTIFICATE,
                    f"devices {other} and {peer} present the same certified key ({certified.name}); one device cannot "
                    "take two ids",
                )
        return peers

    def inbox(self, body: Any, unsubmitted: Any = contextlib.nullcontext) -> dict[str, Any]:
        """Keep the shares the participants sent this device; again, with fewer participants, until submit.

        A second inbox (the coordinator dropped a sender some receiver could not decrypt) must
        name a subset of the first's participants: a device masks with one set of peers, and
        never takes a peer back. ``unsubmitted()`` is held while the result is committed and
        raises if the repetition was submitted (nothing depends on the inbox before then).

        Raises:
            ApiError: 400 ``secagg_bad_share`` with ``senders``, the ids whose ciphertexts do
                not decrypt (AES-GCM fails): nothing is kept, the senders are to blame.
        """
        participants = id_list(body, "participants", self.devices)
        if not set(participants) <= set(self.public) or self.me not in participants:
            raise malformed(
                f"participants must include this device ({self.me}) and only devices of the shares phase "
                f"{sorted(self.public)}"
            )
        if self.stage == "ready" and not set(participants) <= set(self.participants):
            raise ApiError(
                409,
                ErrorCode.SECAGG_INCONSISTENT,
                f"a second inbox may only drop participants of the first {self.participants}, got {participants}",
            )
        if len(participants) < self.threshold:
            raise ApiError(
                409,
                ErrorCode.SECAGG_TOO_FEW,
                f"{len(participants)} participants are fewer than the threshold {self.threshold}; this round cannot "
                "complete",
            )
        sent = member(body, "shares", dict)
        expected = {str(p) for p in participants if p != self.me}
        if set(sent) != expected:
            raise malformed(
                f"shares must hold exactly one ciphertext from each other participant {sorted(expected, key=int)}"
            )
        held = {self.me: self.held[self.me]}
        failed: list[int] = []
        for name, text in sent.items():
            peer = int(name)
            blob = unb64(text, _keys.CIPHERTEXT_BYTES, f"shares[{name!r}]")
            key = _keys.agree(self.c, self.public[peer][0], "share", self.rep)
            try:
                plain = _keys.decrypt_share(key, self.rep, peer, self.me, blob)
            except ValueError:
                failed.append(peer)
                continue
            held[peer] = (plain[:32], plain[32:])
        if failed:  # every bad sender at once: the coordinator drops them and delivers again
            raise BadShares(sorted(failed), self.rep, self.me)
        with unsubmitted():
            self.held, self.participants, self.stage = held, participants, "ready"
        return {"participants": len(participants)}

    def _survivors(self, body: Any, phase: str) -> list[int]:
        if self.stage != "masked":
            raise ApiError(
                409,
                ErrorCode.SECAGG_OUT_OF_ORDER,
                f"{phase} comes after this device's masked result for repetition {self.rep}; it is at the {self.stage} "
                "phase",
            )
        survivors = id_list(body, "survivors", self.devices)
        if not set(survivors) <= set(self.participants):
            raise malformed(f"survivors must be participants {self.participants}")
        if self.me not in survivors:
            raise malformed(f"survivors must include this device ({self.me}): it sent its masked result")
        if len(survivors) < self.threshold:
            raise ApiError(
                409,
                ErrorCode.SECAGG_TOO_FEW,
                f"{len(survivors)} survivors are fewer than the threshold {self.threshold}: revealing shares now could "
                "unmask one device",
            )
        return survivors

    def consistency(self, body: Any) -> dict[str, Any]:
        """Sign the survivor list (Bonawitz et al. 2017, round 3): one list per repetition, never two."""
        if self.identity is None:
            raise ApiError(
                409,
                ErrorCode.SECAGG_UNSIGNED,
                "this device does not sign (it was served without peer_ca); the consistency phase is for signed rounds",
            )
        survivors = self._survivors(body, "consistency")
        if self.signed is not None and self.signed != survivors:
            raise ApiError(
                409, ErrorCode.SECAGG_INCONSISTENT,
                f"this device signed the survivors {self.signed} for repetition {self.rep} already; it signs one list "
                f"per repetition, not {survivors}",
            )  # fmt: skip
        from .identity import survivors_message

        self.signed = survivors
        return {"signature": _keys.b64(self.identity.sign(survivors_message(self.rep, self.s.public, survivors)))}

    def _check_signatures(self, body: Any, survivors: list[int]) -> None:
        """At least ``t`` survivors signed the very list this device signed (round 3): else no share leaves."""
        from .identity import MAX_SIGNATURE, decode_b64, survivors_message

        if self.signed != survivors:
            listed = "no list yet" if self.signed is None else f"{self.signed}"
            raise ApiError(
                409,
                ErrorCode.SECAGG_INCONSISTENT,
                f"unmask must name the survivors this device signed in the consistency phase ({listed}), got "
                f"{survivors}",
            )
        relayed = member(body, "signatures", dict)
        if len(relayed) > len(survivors):
            raise malformed(f"signatures holds {len(relayed)} entries; at most one per survivor ({len(survivors)})")
        valid = []
        for name, text in relayed.items():
            peer = device_id(name, self.devices, "signatures")
            if peer not in survivors:
                raise malformed(f"signatures names device {peer}, not a survivor {survivors}")
            try:
                signature = decode_b64(text, MAX_SIGNATURE, f"signatures[{name!r}]")
            except ValueError as exc:
                raise malformed(str(exc)) from None
            if not self.peers[peer].verifies(signature, survivors_message(self.rep, self.public[peer][1], survivors)):
                raise ApiError(
                    400,
                    ErrorCode.SECAGG_BAD_SIGNATURE,
                    f"device {peer}'s consistency signature ({self.peers[peer].name}) does not verify over the "
                    f"survivors {survivors}",
                )
            valid.append(peer)
        if len(valid) < self.threshold:
            raise ApiError(
                409, ErrorCode.SECAGG_INCONSISTENT,
                f"only {len(valid)} survivor(s) {sorted(valid)} signed the survivors {survivors}; this device reveals "
                f"shares only when at least the threshold {self.threshold} did (else survivors may have been shown "
                "different lists)",
            )  # fmt: skip

    def unmask(self, body: Any) -> dict[str, Any]:
        survivors = self._survivors(body, "unmask")
        dropped = id_list(body, "dropped", self.devices, empty=True)
        if set(survivors) & set(dropped) or set(survivors) | set(dropped) != set(self.participants):
            raise malformed(f"survivors and dropped must split the participants {self.participants} between them")
        if self.identity is not None:
            self._check_signatures(body, survivors)
        # The rule that keeps one device's update hidden: never both secrets of the same peer.
        both = [p for p in survivors if self.revealed.get(p) == "s"] + [
            p for p in dropped if self.revealed.get(p) == "b"
        ]
        if both:
            raise ApiError(
                409, ErrorCode.SECAGG_BOTH_SHARES,
                f"device(s) {sorted(both)} were already named the other way in this repetition; a device never reveals "
                "shares of both b and s_sk of one peer (that would unmask its update)",
            )  # fmt: skip
        for p in survivors:
            self.revealed[p] = "b"
        for p in dropped:
            self.revealed[p] = "s"
        return {
            "b": {str(p): _keys.b64(self.held[p][0]) for p in survivors},
            "s": {str(p): _keys.b64(self.held[p][1]) for p in dropped},
        }

    # -- the masked result ----------------------------------------------------------

    def mask(self, fed: Any, encoding: Any, rep: int) -> Payload:
        """The masked reply of a trained FedArrays: ``input_vector + sum ±PRG(s_uv) + PRG(b)`` (uint64).

        Raises:
            ValueError: more samples than ``max_samples``, or a non-finite update.
        """
        from . import masking

        samples = fed.samples
        if not is_int(samples) or not 0 <= samples <= self.max_samples:
            raise ValueError(
                f"train reported {samples!r} samples; secure aggregation takes 0 to max_samples ({self.max_samples}): "
                "raise SecAgg(max_samples=...) on the coordinator"
            )
        received, _ = fed.decode(encoding)
        layout = fed.layout()
        trained = {name: np.asarray(a) for name, a in fed.get_arrays().items()}
        if list(trained) != list(layout):
            raise ValueError("the model's arrays changed names during training")
        width = masking.digit_width(self.max_samples, self.devices)
        vector = masking.input_vector(trained, received, samples, self.clip, self.scale, width)
        masks: list[tuple[bytes, int]] = [(_keys.derive(self.b, "self", rep), 1)]
        for peer in self.participants:
            if peer != self.me:
                masks.append((_keys.agree(self.s, self.public[peer][1], "mask", rep), 1 if self.me < peer else -1))
        masking.apply_masks(vector, masks)
        self.stage = "masked"  # under this session's lock: Device._work takes it
        return encode_payload({MASKED_NAME: vector}, {MASKED_KEY: MASKED_VERSION})


class BadShares(ApiError):
    """400 ``secagg_bad_share``: the shares of ``senders`` do not decrypt; answered with ``"senders": [ids]``."""

    def __init__(self, senders: list[int], rep: int, me: int) -> None:
        super().__init__(
            400, ErrorCode.SECAGG_BAD_SHARE,
            f"the share(s) that device(s) {senders} sent device {me} for repetition {rep} do not decrypt (AES-GCM "
            "authentication fails): those senders answered the shares phase with garbage, or the ciphertexts were "
            "altered; drop them and deliver the inbox again",
        )  # fmt: skip
        self.senders = senders

    def get_response(self, environ: Any = None, scope: Any = None) -> Any:
        return json_response({"error": self.error, "message": self.message, "senders": self.senders}, self.code)


# -- the routes' entry points (called by fedsync.device.app) ------------------------------


def supported(fed: Any) -> bool:
    """Whether a device serving ``fed`` can answer secure aggregation's phases: an array FedData, with
    the ``secagg`` extra installed (what ``/info`` says under ``capabilities``)."""
    from ..data.arrays import FedArrays

    return isinstance(fed, FedArrays) and _extra_installed()


@functools.cache
def _extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("Crypto", "cryptography"))


def answer(device: Any, rep: int, phase: str, body: bytes) -> dict[str, Any]:
    """Run one phase for ``device`` (a :class:`fedsync.device._state.Device`) and return its JSON answer.

    Raises:
        ApiError: 400 malformed body, 409 out of order or busy, 501 not an array FedData
            or the ``secagg`` extra missing. Nothing changes on a refusal.
    """
    from ..data.arrays import FedArrays

    if not isinstance(device.fed, FedArrays):
        raise ApiError(
            501,
            ErrorCode.NOT_SUPPORTED,
            "secure aggregation needs an array FedData (FedArrays, FedTorch, FedKeras); this device serves "
            f"{type(device.fed).__name__}",
        )
    try:
        import Crypto  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError:
        raise ApiError(
            501,
            ErrorCode.NOT_SUPPORTED,
            "this device cannot do secure aggregation: pip install 'fedsync[secagg]' on it",
        ) from None
    request = parsed(body)
    with device.state_lock:
        job = device.job
        if job is not None and not job.done.is_set() and phase not in ("consistency", "unmask"):
            raise ApiError(409, ErrorCode.BUSY, f"training repetition {job.repetition}; try again when it is done")
        session = device.secagg
        if phase == "keys":
            if rep <= device.last_repetition or (session is not None and rep <= session.rep):
                last = max(device.last_repetition, session.rep if session is not None else 0)
                raise ApiError(
                    409,
                    ErrorCode.STALE_REPETITION,
                    f"repetition {rep} is not above this device's last repetition {last}; start keys at {last + 1} or "
                    "later",
                )
            device.secagg = _new_session(rep, request, getattr(device, "secagg_identity", None))
            return device.secagg.keys_answer()
        if session is None or session.rep != rep:
            raise ApiError(
                409,
                ErrorCode.SECAGG_OUT_OF_ORDER,
                f"no keys phase for repetition {rep} here; run {rep}/secagg/keys first",
            )
    with session.lock:  # the phases' crypto runs outside the device's lock
        wanted = {"shares": ("keys",), "inbox": ("shares", "ready")}.get(phase)
        if wanted is not None and session.stage not in wanted:
            raise ApiError(
                409,
                ErrorCode.SECAGG_OUT_OF_ORDER,
                f"{phase} follows the {wanted[0]} phase; this device is at the {session.stage} phase of repetition "
                f"{rep}",
            )
        if phase == "inbox":
            return session.inbox(request, lambda: _unsubmitted(device, rep))
        return getattr(session, phase)(request)


@contextlib.contextmanager
def _unsubmitted(device: Any, rep: int) -> Any:
    """Hold the device's lock while an inbox is kept: refused once ``rep`` was submitted.

    ``Device.start`` (:mod:`fedsync.device._state`) sets the device's last repetition under this lock.
    """
    with device.state_lock:
        if device.last_repetition >= rep:
            raise ApiError(
                409,
                ErrorCode.SECAGG_OUT_OF_ORDER,
                f"repetition {rep} was submitted already: its masks depend on the inbox it had; no inbox now",
            )
        yield


def session_for_submit(device: Any, rep: int, required: bool) -> Session | None:
    """The session that must mask ``rep``'s result, ``None`` for a plain round.

    Raises:
        ApiError: the submission must be refused (409: secure aggregation begun but unfinished, or required).
    """
    session = device.secagg
    if session is not None and session.rep == rep:
        if session.stage != "ready":
            raise ApiError(
                409,
                ErrorCode.SECAGG_OUT_OF_ORDER,
                f"repetition {rep} began secure aggregation but is at its {session.stage} phase; submit follows the "
                "inbox phase",
            )
        return session
    if required:
        raise ApiError(
            409, ErrorCode.SECURE_AGGREGATION_REQUIRED,
            f"this device takes part only in securely aggregated rounds; repetition {rep} did not run its keys, shares "
            "and inbox phases: use Federated(..., secure_aggregation=SecAgg())",
        )  # fmt: skip
    return None


# -- checks ------------------------------------------------------------------------------


def _new_session(rep: int, body: Any, identity: Any = None) -> Session:
    if not isinstance(body, dict) or set(body) != {"devices", "id", "threshold", "clip", "scale", "max_samples"}:
        raise malformed('keys takes {"devices": n, "id": i, "threshold": t, "clip": c, "scale": s, "max_samples": m}')
    devices = bounded_int(body["devices"], MIN_THRESHOLD, MAX_DEVICES, "devices")
    me = bounded_int(body["id"], 1, devices, "id")
    # Refused here, not trusted to the coordinator: a t of n/2 or less would let it unmask one device.
    threshold = bounded_int(
        body["threshold"],
        *threshold_range(devices),
        f"threshold (a majority of the {devices} devices, at least {MIN_THRESHOLD})",
    )
    try:  # clip first: a huge one must be refused before any arithmetic with it can overflow
        clip = checked_clip(body["clip"])
    except ValueError as exc:
        raise malformed(str(exc)) from None
    scale = bounded_int(body["scale"], 1, MAX_SCALE, "scale")
    max_samples = bounded_int(body["max_samples"], 1, 2**53, "max_samples")
    try:
        checked_bound(clip, scale, max_samples, devices)
    except ValueError as exc:
        raise malformed(str(exc)) from None
    return Session(rep, me, devices, threshold, clip, scale, max_samples, identity)


def _split(secret: bytes, threshold: int, devices: int) -> dict[int, bytes]:
    from . import shamir

    return shamir.split(secret, threshold, devices)
