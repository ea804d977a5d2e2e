"""How a device function reaches a Ray actor: as an import path (``"module:qualname"``), or by value.

A function another process can import goes as its import path (no pickling when not needed); any other
(a lambda, a closure, a function of a notebook, of the driver's script or of a script read from standard
input) is serialized with ``ray.cloudpickle``, Ray's own copy of cloudpickle, the way Ray ships every
task: from the driver to the actors it starts, never back. The finding, serializing and loading are
:mod:`fedsync.transports.device_functions`' (shared with the local process workers); Ray adds that the
script run as ``__main__`` cannot be imported on the cluster's other machines (it goes by value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsync.transports import device_functions

__all__ = ["device_fn_path", "device_fn_for_actors", "resolve", "load", "PICKLER"]

PICKLER = "ray.cloudpickle"
"""What serializes a device function that travels by value: Ray's own cloudpickle, on every machine with Ray."""

_ADVICE = (
    "define device_fn with `def` at the top level of a module the Ray workers can import "
    "(e.g. mypackage/devices.py) and pass the function or the string 'mypackage.devices:device_fn'"
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


def device_fn_for_actors(device_fn: Callable[[int], Any] | str) -> str | bytes:
    """What the actors are given: ``device_fn``'s import path (checked to resolve here), or it serialized by value.

    Args:
        device_fn: ``device_fn(device_id) -> FedData``: any function (a lambda, a closure, one of a notebook
            or of ``__main__`` included), or its import path ``"module:function"``.

    Raises:
        ValueError: a path that is malformed or does not resolve to a callable here.
        TypeError: neither a function nor a string, or a function capturing what cannot be serialized
            (a lock, an open file, a socket).
    """
    if isinstance(device_fn, str):
        return device_fn_path(device_fn)
    shipment = device_functions.ship(device_fn, script=False, pickler=PICKLER, how=_ADVICE)
    if shipment.pickled is not None:
        return shipment.pickled
    return f"{shipment.module}:{shipment.name}"


def load(device_fn: str | bytes) -> Callable[[int], Any]:
    """In an actor: the function :func:`device_fn_for_actors` gave, imported or unpickled (the driver's bytes).

    Raises:
        ImportError, AttributeError, TypeError: as :func:`resolve`, or the function's modules are missing here.
    """
    if isinstance(device_fn, bytes):
        return device_functions.unpickle(device_fn, PICKLER)
    return resolve(device_fn)


def resolve(path: str) -> Callable[[int], Any]:
    """Import ``"module:qualname"`` and return the function it names.

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
        TypeError: it names something that is not callable.
    """
    module, _, qualname = path.partition(":")
    return device_functions.load(qualname, module)
