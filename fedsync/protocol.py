"""The FedData protocol: what a federated object exchanges and how it merges.

A :class:`FedData` is declared identically on every device and on the
coordinator. Each round the coordinator ``serialize``\\ s its state, every
device ``receive``\\ s it (for a model: load the weights and train) and
``serialize``\\ s its own state back, and the coordinator ``merge``\\ s what
came back. ``FedData`` says *what* is exchanged and *how* it merges;
:class:`fedsync.Federated` says *when* and *with whom*.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from .wire.codec import Payload

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FedData", "FIRST", "MAX_REPETITION", "Encoding"]

FIRST = 1
"""The repetition number of the first round. Repetitions only grow."""

MAX_REPETITION = 2**53
"""The largest repetition number a device, a coordinator or a checkpoint accepts.

Exact in float64 (JSON readers in other languages), and far beyond any run:
a round a second for 285 million years. Anything above it, or not an integer,
is refused before use.
"""

Encoding: TypeAlias = str | bytes | bytearray | memoryview | Payload
"""What ``serialize`` returns and ``receive``/``merge`` are handed.

A ``str`` travels as UTF-8 ``text/plain`` and arrives as ``str``; anything
bytes-like, or a :class:`fedsync.wire.codec.Payload` of buffers, travels as
``application/octet-stream`` and arrives as a bytes-like object.
"""


class FedData:
    """Base class of everything that can be exchanged in a federated round.

    Subclasses implement four methods (the seed's contract):

    - ``specs(repetition) -> str``: a short string that must be equal on the
      coordinator and on every device (e.g. a hash of a model's architecture).
    - ``serialize(repetition) -> str | bytes``: the state to send.
    - ``receive(encoding, repetition)``: on a device, act on the coordinator's
      state (for models: load the weights, then train locally).
    - ``merge(encodings, repetition)``: on the coordinator, combine the devices'
      states. ``encodings`` is an iterable yielding payloads in arrival order;
      if the round fails it raises mid-way, so accumulate aside and assign
      only at the end, leaving ``self`` unchanged on failure.

    Optional:

    - ``check(encoding, repetition)``: raise ``ValueError`` if a payload is
      malformed, *before* anything is changed. A device answers 400 and the
      coordinator drops that device's reply instead of merging it.
    - ``summary(repetition) -> dict``: a JSON-able description shown in the
      device's ``/info`` so that mismatches can be explained.
    - ``evaluate(encoding, repetition) -> (samples, metrics)``: on a device,
      measure the coordinator's state on local data without training and
      without changing the device's own state (``Federated.evaluate``).
    - ``device_state()`` and ``load_device_state(state)``: the device's own
      arrays that survive between rounds and never travel (control variates,
      error-feedback residuals, personal layers); ``serve(state_dir=...)``
      saves them after each round and restores them at start, a simulation
      keeps them while the device is not sampled.
    """

    accepts_views: bool = False
    """``True`` if binary payloads may arrive as a ``memoryview`` rather than bytes.

    fedsync then reads them into buffers that cost fewer page faults (numpy's
    allocator) instead of a fresh ``bytes``; array FedData set it, since
    ``codec.decode`` takes any buffer. Leave it ``False`` if your code calls
    bytes methods or ``json.loads`` on binary payloads.
    """

    accepts_streams: bool = False
    """``True`` if ``merge`` takes replies as :class:`fedsync.wire.replies.ReplyStream` objects.

    The coordinator then hands the merge each reply unread, without calling
    ``check`` first: the merge reads it (``readinto``), checks it as it goes,
    and reports a bad one with ``reject(reason)`` instead of raising, so the
    round continues without that device. FedArrays does, folding each reply
    into its running sum while it downloads: the coordinator never holds a
    whole reply.
    """

    aggregates: bool = False
    """``True`` if this FedData's replies merge the replies of devices of its own (an aggregator,
    :mod:`fedsync.aggregator`): its device says ``"aggregator": true`` in ``/info``, and a coordinator
    whose strategy cannot merge merges (a median, Krum, central DP, secure aggregation) refuses it.
    """

    def specs(self, repetition: int) -> str:
        """A string that must match between coordinator and devices."""
        raise NotImplementedError(f"{type(self).__name__} must implement specs(repetition) -> str")

    def serialize(self, repetition: int) -> Encoding:
        """The state to send: ``str`` (sent as UTF-8 ``text/plain``), ``bytes``, a
        ``bytearray``/``memoryview``, or a :class:`fedsync.wire.codec.Payload` (frames sent
        without a copy); see :data:`Encoding`."""
        raise NotImplementedError(f"{type(self).__name__} must implement serialize(repetition)")

    def receive(self, encoding: Encoding, repetition: int) -> None:
        """Device side: act on the coordinator's state (e.g. load weights and train)."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive(encoding, repetition)")

    def merge(self, encodings: Iterable[Any], repetition: int) -> None:
        """Coordinator side: combine the devices' states.

        Each item is an :data:`Encoding` (``str``, or ``bytes``/``memoryview`` when
        ``accepts_views``), or a :class:`fedsync.wire.replies.ReplyStream` when ``accepts_streams``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement merge(encodings, repetition)")

    def check(self, encoding: Encoding, repetition: int) -> None:
        """Raise ``ValueError`` if ``encoding`` is malformed; the default accepts everything."""

    def evaluate(
        self, encoding: Encoding, repetition: int
    ) -> tuple[int, dict[str, float]] | tuple[int, dict[str, float], dict[str, int]]:
        """Device side: ``(samples, metrics)`` of the coordinator's state on local data; changes nothing.

        An aggregator answers ``(samples, metrics, weights)``: each metric's own weight below it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support federated evaluation")

    def summary(self, repetition: int) -> dict[str, Any] | None:
        """A JSON-able description for ``/info``; ``None`` when there is nothing to say."""
        return None

    def capabilities(self) -> dict[str, Any]:
        """What this FedData can do beyond the routes every device has, for ``/info`` (docs/protocol.md).

        Optional; the default says nothing. Array FedData list the ``wire_formats`` they decode and
        whether they ``evaluate``; a coordinator sends such a device only what it decodes, and asks
        only devices that evaluate for an evaluation.
        """
        return {}

    def max_payload(self, repetition: int) -> int | None:
        """The largest payload, in bytes, this FedData can accept for ``repetition``; ``None``: no bound known.

        Optional. A device refuses a submission or evaluation whose ``Content-Length`` is larger
        with ``413 too_large`` before reading a byte of it, instead of reading it whole and then
        finding it malformed. An array FedData knows its bound from its arrays' shapes and dtypes.
        """
        return None

    def device_state(self) -> dict[str, np.ndarray]:
        """This device's own arrays that survive between rounds and are never sent; ``{}`` (the default): none.

        Optional. Names to numpy arrays of a dtype the codec carries (no object or complex arrays).
        fedsync encodes them right after it calls this (the codec's safetensors layout, never
        pickle): after each round to ``serve(state_dir=...)``'s file, and in a simulation when
        the device is released, so views of live arrays are fine.
        """
        return {}

    def load_device_state(self, state: dict[str, np.ndarray]) -> None:
        """Load a state :meth:`device_state` returned earlier (a restart, or a simulated device built again).

        ``state`` has exactly the names, shapes and dtypes of ``device_state()`` now (fedsync checks
        before calling); an override checks again and raises ``ValueError`` before changing anything.

        Raises:
            ValueError: ``state`` does not fit this FedData's state; nothing changed. The default
                (no state) accepts only ``{}``.
        """
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no device state, but a state of {sorted(state)} was given; "
                "implement device_state() and load_device_state() (FedArrays: state={...})"
            )
