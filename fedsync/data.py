"""The seed's import path: ``from fedsync.data import FedData, FIRST, FedKeras``.

Framework adapters (``FedKeras``, ``FedTorch``) are resolved on first access,
so importing this module never imports a framework.
"""

from __future__ import annotations

from typing import Any

from .arrays import FedArrays
from .protocol import FIRST, FedData

__all__ = ["FedData", "FIRST", "FedArrays", "FedKeras", "FedTorch"]

_ADAPTERS = {"FedKeras": ("fedsync_keras", "keras"), "FedTorch": ("fedsync_torch", "torch")}


def __getattr__(name: str) -> Any:
    if name not in _ADAPTERS:
        raise AttributeError(f"module 'fedsync.data' has no attribute {name!r}")
    module, extra = _ADAPTERS[name]
    try:
        imported = __import__(module)
        return getattr(imported, name)
    except ImportError as exc:
        raise ImportError(f"{name} needs the {extra} extra: pip install 'fedsync[{extra}]' ({exc})") from exc
