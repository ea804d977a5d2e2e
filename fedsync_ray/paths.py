"""``device_fn`` as an import path (``"module:qualname"``): how a device function reaches a Ray actor without pickle.

The finding and loading are :mod:`fedsync.transports.device_functions`' (shared with the local
process workers); Ray adds that the script run as ``__main__`` cannot be imported on
the cluster's other machines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsync.transports import device_functions

__all__ = ["device_fn_path", "resolve"]

_ADVICE = (
    "the ray backend ships device_fn to its actors as an import path, not as pickled code: define it "
    "with `def` at the top level of a module the Ray workers can import (e.g. mypackage/devices.py) "
    "and pass the function or the string 'mypackage.devices:device_fn'"
)


def device_fn_path(device_fn: Callable[[int], Any] | str) -> str:
    """The import path ``"module:qualname"`` of ``device_fn``, checked to resolve to it here.

    Args:
        device_fn: a module-level function, or its import path as a string.

    Raises:
        ValueError: a lambda, a nested function (a closure), a function of ``__main__``
            (the actors cannot import the driver's script), or a path that is
            malformed or does not resolve to a callable.
        TypeError: ``device_fn`` is neither a function nor a string.
    """
    module, _, qualname = device_functions.locate(device_fn, script=False, how=_ADVICE)
    path = f"{module}:{qualname}"
    if isinstance(device_fn, str):
        try:
            resolve(path)
        except (ImportError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"device_fn path {device_fn!r} does not resolve here ({type(exc).__name__}: {exc}); {_ADVICE}"
            ) from None
    return path


def resolve(path: str) -> Callable[[int], Any]:
    """Import ``"module:qualname"`` and return the function it names.

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
        TypeError: it names something that is not callable.
    """
    module, _, qualname = path.partition(":")
    return device_functions.load(qualname, module)
