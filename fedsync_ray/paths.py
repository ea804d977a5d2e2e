"""``device_fn`` as an import path (``"module:qualname"``): how a device function reaches a Ray actor without pickle."""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable

__all__ = ["device_fn_path", "resolve"]

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

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
    if isinstance(device_fn, str):
        if not _PATH.match(device_fn):
            raise ValueError(f"device_fn path {device_fn[:200]!r} is not 'module:function'; {_ADVICE}")
        try:
            found = resolve(device_fn)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"device_fn path {device_fn!r} does not resolve here ({type(exc).__name__}: {exc}); {_ADVICE}") from None
        if not callable(found):
            raise ValueError(f"device_fn path {device_fn!r} names a {type(found).__name__}, not a function; {_ADVICE}")
        return device_fn
    if not callable(device_fn):
        raise TypeError(f"device_fn must be a function device_fn(device_id) -> FedData or its import path, got {type(device_fn).__name__}")
    module = getattr(device_fn, "__module__", None)
    qualname = getattr(device_fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(f"device_fn {device_fn!r} is a lambda or a nested function (a closure); {_ADVICE}")
    if module == "__main__":
        raise ValueError(f"device_fn {qualname} is defined in the script being run (__main__); {_ADVICE}")
    path = f"{module}:{qualname}"
    try:
        same = resolve(path) is device_fn
    except (ImportError, AttributeError):
        same = False
    if not same:
        raise ValueError(f"device_fn {device_fn!r} is not reachable as {path!r} (a decorated or replaced function?); {_ADVICE}")
    return path


def resolve(path: str) -> Any:
    """Import ``"module:qualname"`` and return the object it names.

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
    """
    module, _, qualname = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found
