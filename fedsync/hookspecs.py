"""The hooks fedsync plugins implement; each docstring is the reference.

A plugin is a module (usually named by an entry point in the ``fedsync``
group) with functions marked ``@fedsync.hookimpl`` whose names match the specs
below. As in pluggy, an implementation may accept any subset of a spec's
arguments, so specs can grow without breaking plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from .protocol import FedData

__all__ = ["hookspec", "hookimpl", "register_adapters"]

hookspec = pluggy.HookspecMarker("fedsync")
"""Marks the hook specifications below (fedsync's own use)."""

hookimpl = pluggy.HookimplMarker("fedsync")
"""Marks a plugin's hook implementation: ``@fedsync.hookimpl def register_adapters(register): ...``."""


@hookspec
def register_adapters(register: Callable[[str, "type[FedData]"], None]) -> None:
    """Register FedData adapters by their specs token.

    Call ``register(token, cls)`` once per adapter. ``token`` is the part of the
    adapter's specs strings before the first ``:`` (``"torch"`` for
    ``"torch:sha256:9f2c..."``): a coordinator that receives specs from a
    device finds the adapter through it. ``cls`` is a :class:`fedsync.FedData`
    subclass. Tokens are lowercase words (``[a-z0-9_.-]+``); registering a
    token another plugin already registered is an error naming both plugins.

    Keep this cheap: import your framework (torch, tensorflow) inside the
    adapter's methods, not at module level, so that loading plugins never
    imports a framework.

    Example::

        @fedsync.hookimpl
        def register_adapters(register):
            register("jax", FedJax)
    """
