"""The seed's import path: ``from fedsync.data import FedData, FIRST, FedKeras``.

Framework adapters (``FedKeras``, ``FedTorch``) resolve through the plugin
registry on first access, so importing this module never imports a framework.
"""

from __future__ import annotations

from typing import Any

from ..protocol import FIRST, FedData
from .arrays import FedArrays

__all__ = ["FedData", "FIRST", "FedArrays", "FedKeras", "FedTorch"]

_ADAPTER_TOKENS = {"FedKeras": "keras", "FedTorch": "torch"}


def __getattr__(name: str) -> Any:
    token = _ADAPTER_TOKENS.get(name)
    if token is None:
        raise AttributeError(f"module 'fedsync.data' has no attribute {name!r}")
    from .. import plugins  # the registry loads plugins on first use, not at import

    install = f"pip install 'fedsync[{token}]'"
    adapter = next((a for a in plugins.describe() if a["token"] == token), None)
    if adapter is None:
        raise ImportError(f"{name} is not installed: no plugin registers the {token!r} adapter. To fix: {install}")
    if not adapter["importable"]:
        missing = ", ".join(adapter["cls"].requires)
        raise ImportError(f"{name} needs {missing}, which is not installed. To fix: {install}")
    return adapter["cls"]
