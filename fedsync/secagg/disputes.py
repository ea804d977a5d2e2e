"""Whom to drop when devices refuse their inbox naming senders whose shares do not decrypt.

A receiver ``r`` that cannot decrypt sender ``s``'s share (AES-GCM fails, section 4 of
Bonawitz et al. 2017, round 2) answers ``secagg_bad_share`` with ``senders``. The coordinator
cannot check the claim without the pair's key (asking for it would hand the coordinator a
share of an honest device's secrets: see docs/privacy.md), so each claim is a *dispute*
between ``r`` and ``s``: with an honest coordinator, at least one of the two is faulty (a
sender of garbage or a lying accuser).

The rule (:func:`resolve`), greedy over the disputes of the whole round: while disputes
remain unresolved, drop the device in the most disputes (with distinct devices, counting the
round's earlier ones too), ties going to an accused sender, then the lowest id. Hence:

- one garbage sender, accused by any number of receivers, is dropped alone;
- a liar accusing several devices is in more disputes than any of them and is dropped itself;
  a liar accusing one device (or one per retry, since earlier disputes still count) can get
  one honest device excluded, by the tie rule, before it is the most disputed itself;
- every drop resolves at least one dispute, and each dispute is one faulty act, so the
  honest devices dropped are at most the number of faulty acts (false accusations and
  undecryptable shares), never more.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

__all__ = ["resolve"]


def resolve(
    accusations: Mapping[int, Collection[int]], earlier: Iterable[tuple[int, int]] = ()
) -> tuple[list[int], list[tuple[int, int]]]:
    """The devices to drop, in order, and the round's disputes so far.

    Args:
        accusations: accuser id -> the sender ids it named (this delivery of the inbox).
        earlier: ``(accuser, sender)`` disputes of earlier deliveries this round (resolved:
            they count toward a device's disputes, not as still open).

    Returns:
        ``(dropped, disputes)``: at least one id when ``accusations`` names any sender;
        ``disputes`` is ``earlier`` plus the new ones, for the next call.
    """
    disputes = list(
        dict.fromkeys([*earlier, *((a, s) for a, senders in sorted(accusations.items()) for s in senders if s != a)])
    )
    open_ = {(a, s) for a, senders in accusations.items() for s in senders if s != a}
    counterparts: dict[int, set[int]] = {}
    for a, s in disputes:
        counterparts.setdefault(a, set()).add(s)
        counterparts.setdefault(s, set()).add(a)
    accused = {s for _, s in open_}
    dropped: list[int] = []
    while open_:  # bounded: each pass drops a device in an open dispute, and resolves it
        involved = {u for pair in open_ for u in pair}
        worst = min(involved, key=lambda u: (-len(counterparts[u]), u not in accused, u))
        dropped.append(worst)
        open_ = {(a, s) for a, s in open_ if worst not in (a, s)}
    return dropped, disputes
