"""FedTorch: torch.nn.Module state dicts as federated data.

Registers the ``torch`` adapter through fedsync's ``register_adapters`` hook
(entry point ``torch = "fedsync_torch"``). Importing this package does not
import torch; constructing a :class:`FedTorch` does.
"""

from __future__ import annotations

from fedsync.plugins.hookspecs import RegisterAdapter, hookimpl

from .adapter import FedTorch

__all__ = ["FedTorch", "register_adapters"]


@hookimpl
def register_adapters(register: RegisterAdapter) -> None:
    """Register :class:`FedTorch` under the specs token ``"torch"``."""
    register("torch", FedTorch)
