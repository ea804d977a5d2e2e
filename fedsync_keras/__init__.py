"""FedKeras: Keras 3 models (any backend) as federated data.

Registered with fedsync through the ``fedsync`` entry point ``keras``. Importing
this package does not import keras: the adapter imports it when a model is
wrapped.
"""

from __future__ import annotations

from fedsync.plugins.hookspecs import RegisterAdapter, hookimpl

from .adapter import FedKeras

__all__ = ["FedKeras", "register_adapters"]


@hookimpl
def register_adapters(register: RegisterAdapter) -> None:
    """Register :class:`FedKeras` under the specs token ``keras``."""
    register("keras", FedKeras)
