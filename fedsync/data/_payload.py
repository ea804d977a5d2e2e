"""What a FedArrays payload holds: the model's arrays that travel, then the arrays its strategy adds.

A mixin of :class:`~fedsync.data.arrays.FedArrays`: the model's arrays come from the adapter's
``get_arrays``/``set_arrays``/``layout``; which of them travel is ``shared=`` (:mod:`._sharing`);
the strategy's travelling arrays (SCAFFOLD's control variates) are ``extra_arrays`` (:mod:`._extras`).
A device's own state gathers ``state=``, the strategy's device arrays and the local arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

from ..errors import PayloadRejected
from ..strategies import Strategy
from . import _extras, _sharing, _updates, _views
from . import _state as device_state

__all__ = ["PayloadParts"]


class PayloadParts:
    """The payload's parts, for a class with the adapter methods, ``strategy``, ``state`` and ``shared``."""

    strategy: Strategy
    state: MutableMapping[str, np.ndarray]
    shared: _sharing.Shared
    _extras: dict[str, np.ndarray] | None
    _selection: _sharing.Selection | None
    _frozen: str | None
    updates: str | None
    _residuals: dict[str, np.ndarray] | None
    _asked: tuple[str | None, float | None]
    view: tuple[str, dict[str, np.ndarray]] | None
    _update: tuple[dict[str, np.ndarray], dict[str, str]] | None
    global_arrays: dict[str, np.ndarray] | None
    sending: str | None

    @property
    def asked(self) -> tuple[str | None, float | None]:
        """What the last payload received asked this FedData to reply: ``(updates, top_k)`` (``None``s: weights).

        Set by ``receive``; an aggregator passes it on to the devices below.
        """
        return self._asked

    def reply_as_update(self) -> None:
        """Reply the arrays that travel as their update from the model received this round (``fedsync.delta``).

        For a FedData changed by other means than ``train`` (an aggregator's merge of the round below), when the
        payload asked for updates: its parent then adds the update to its own model, as to a device's.

        Raises:
            RuntimeError: no model received this round was kept (the payload asked for no updates).
            ValueError: an update is not finite in its dtype.
        """
        start = self.global_arrays
        if start is None:
            raise RuntimeError(
                "no model received this round was kept: reply_as_update follows a payload asking updates"
            )
        trained = self._shared_part(self.get_arrays())
        self._update = _updates.reply_arrays(trained, start, {}, {}, None, self.sending)

    def get_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        raise NotImplementedError

    def parameter_kinds(self) -> dict[str, str]:
        """Each array's kind for ``shared="trainable"``: ``"trainable"``, ``"frozen"`` or ``"buffer"``.

        Adapters say it (torch: ``requires_grad``; Keras: ``trainable``). Numpy arrays carry no such flag.

        Raises:
            TypeError: always, here: name the arrays that travel with ``shared={"include": [...]}``.
        """
        raise TypeError(
            f"{type(self).__name__}'s arrays carry no trainable flag, so shared='trainable' cannot choose; name "
            "them: shared={'include': ['w*']} or shared={'exclude': ['head*']}"
        )

    # -- which arrays ---------------------------------------------------------------------

    @property
    def selection(self) -> _sharing.Selection:
        """The model's array names that travel, stay frozen, stay local (``shared=``); made on first use."""
        if self._selection is None:
            kinds = self.parameter_kinds() if self.shared == "trainable" else None
            chosen = _sharing.select(list(self.layout()), self.shared, kinds)
            if not chosen.everything:
                _sharing.check_ties(chosen, self.get_arrays())
            self._selection = chosen
        return self._selection

    @property
    def extra_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the strategy sends beside the model (SCAFFOLD's control variates), by name; ``{}`` for most.

        Made, zero, on first use from :meth:`Strategy.companions <fedsync.strategies.Strategy.companions>`;
        arrays the strategy keeps on the device (:meth:`~fedsync.strategies.Strategy.device_arrays`) are
        added to ``state`` then. Raises ``ValueError`` if a model array has one of their names.
        """
        if self._extras is None:
            self._extras = _extras.make(self)
        return self._extras

    @property
    def residuals(self) -> dict[str, np.ndarray]:
        """Error feedback (``updates="topk"`` or ``"stc"``): ``residual/<name>`` per floating array that travels."""
        if self._residuals is None:  # made for a device that chose top-k, or once a coordinator asks for it
            if self.updates not in _updates.SPARSE and self._asked[0] not in _updates.SPARSE:
                return {}
            self._residuals = _updates.residuals(self._shared_part(self.layout()))
        return self._residuals

    def frozen_fingerprint(self) -> str | None:
        """``sha256:<32 hex>`` of the frozen arrays' content (computed once), ``None`` without frozen arrays."""
        frozen = self.selection.frozen
        if frozen and self._frozen is None:
            self._frozen = _sharing.frozen_digest(self.get_arrays(), frozen)
        return self._frozen

    def _shared_part(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``arrays`` (or of a layout) for the arrays that travel."""
        chosen = self.selection
        return dict(arrays) if chosen.everything else {name: arrays[name] for name in chosen.shared}

    def _payload_arrays(self) -> dict[str, np.ndarray]:
        """What a payload of this FedData holds: the model's arrays that travel, then the strategy's."""
        return {**self._shared_part(self.get_arrays()), **self.extra_arrays}

    def _payload_layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        extras = {name: (a.shape, a.dtype) for name, a in self.extra_arrays.items()}
        return {**self._shared_part(self.layout()), **extras}

    def _load_payload(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Load checked payload arrays: the model's through ``set_arrays``, the strategy's into ``extra_arrays``."""
        extras = self.extra_arrays
        self.set_arrays(_extras.model_part(arrays, extras) if extras else arrays)
        for name, target in extras.items():
            np.copyto(target, arrays[name])

    def _specs_source(self, architecture: Any) -> Any:
        """What the specs hash: the architecture, and when present what travels, the frozen content, the extras."""
        parts: list[Any] = [architecture]
        chosen = self.selection
        if not chosen.everything:
            parts.append(
                {"shared": list(chosen.shared), "frozen": self.frozen_fingerprint(), "local": list(chosen.local)}
            )
        extras = [[name, list(a.shape), a.dtype.name] for name, a in self.extra_arrays.items()]
        if extras:
            parts.append(extras)
        return parts if len(parts) > 1 else architecture

    # -- the device's own state -------------------------------------------------------------

    def _saved_view(
        self, state: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], tuple[str, dict[str, np.ndarray]] | None]:
        """``state`` without its saved view, and that view (checked: all its entries, a valid id), or ``None``."""
        names = [name for name in state if _views.is_view(name)]
        if not names:
            return state, None
        optional = {n: v for n, v in self.optional_state().items() if _views.is_view(n)}
        if sorted(names) != sorted(optional):
            raise PayloadRejected(f"the state's view {sorted(names)[:4]} is not this model's {sorted(optional)[:4]}")
        for name in names:
            shape, dtype = optional[name]
            if state[name].shape != shape or state[name].dtype != dtype:
                raise PayloadRejected(f"{name!r} in the state is {state[name].shape} {state[name].dtype}")
        identity = bytes(state[_views.VIEW_ID]).decode("ascii", "replace")
        view = {name[len(_views.VIEW) :]: np.array(state[name], copy=True) for name in names if name != _views.VIEW_ID}
        if _views.view_id(view) != identity:
            raise PayloadRejected("the state's view does not match its id: damaged")
        return {name: a for name, a in state.items() if name not in names}, (identity, view)

    def device_state(self) -> dict[str, np.ndarray]:
        """``state=``'s arrays, the strategy's (SCAFFOLD's ``c_i``) and the local ones (``local/<name>``).

        Live arrays (or the adapter's copies), encoded at once.
        """
        self.extra_arrays  # noqa: B018  # makes the strategy's device arrays, so a saved state loads before round 1
        local = self.selection.local
        arrays = self.get_arrays() if local else {}
        state = {**self.state, **self.residuals, **{_sharing.LOCAL + name: arrays[name] for name in local}}
        if self.view is not None:  # the model as last loaded, a base for the next download (download="delta")
            state.update({_views.VIEW + name: a for name, a in self.view[1].items()})
            state[_views.VIEW_ID] = np.frombuffer(self.view[0].encode(), np.uint8)
        return state

    def optional_state(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Entries a saved state may hold beyond :meth:`device_state`'s, each group all or none: a view
        (``view/<name>``, ``view.id``) and top-k's residuals (``residual/<name>``) not made yet."""
        travel = {
            name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in self._shared_part(self.layout()).items()
        }
        residuals = {_updates.RESIDUAL + n: layout for n, layout in travel.items() if layout[1].kind == "f"}
        views = {_views.VIEW + name: layout for name, layout in travel.items()}
        return {**views, _views.VIEW_ID: ((71,), np.dtype(np.uint8)), **residuals}

    def load_device_state(self, state: dict[str, np.ndarray]) -> None:
        """Load ``state`` (as :meth:`device_state` gives it) in place; ``ValueError`` (checked first) if it misfits."""
        self.extra_arrays  # noqa: B018  # as in device_state
        state, view = self._saved_view(state)
        local = {name: state[_sharing.LOCAL + name] for name in self.selection.local if _sharing.LOCAL + name in state}
        kept = made = self.residuals
        if not kept and any(name.startswith(_updates.RESIDUAL) for name in state):  # saved for an asked top-k
            kept = made = _updates.residuals(self._shared_part(self.layout()))  # adopted once every check passed
        own = {name: a for name, a in state.items() if not name.startswith(_sharing.LOCAL) and name not in kept}
        fed = {name: a for name, a in state.items() if name in kept}
        if (
            len(local) != len(self.selection.local)
            or len(own) + len(local) + len(fed) != len(state)
            or (fed and len(fed) != len(kept))
        ):
            raise PayloadRejected(
                f"the state's local arrays {sorted(state)[:6]} are not this model's {list(self.selection.local)[:6]}"
            )
        layout = self.layout()
        for name, a in local.items():
            shape, dtype = layout[name]
            if a.shape != tuple(shape) or a.dtype != dtype:
                raise PayloadRejected(
                    f"local array {name!r} of the state is {a.shape} {a.dtype}, expected {shape} {dtype}"
                )
        target = {**self.state, **{name: kept[name] for name in fed}}  # residuals absent: reset, kept as they are
        device_state.load_in_place(target, {**own, **fed})  # every layout checked before a copy
        if local:
            self.set_arrays(local)
        if view is not None:
            self.view = view
        if made:
            self._residuals = made
