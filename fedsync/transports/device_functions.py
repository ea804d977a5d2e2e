"""A simulated device's ``device_fn`` found by its name, so another process can import it instead of unpickling it.

The process workers of :func:`fedsync.coordinator.simulation.run_simulation` (``worker_kind="processes"``)
and the Ray backend (:mod:`fedsync_ray`) both ship ``device_fn`` as a name,
``"module:qualname"``: code crosses the process boundary as an import, never as pickle.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["locate", "load", "WORKER_RUN_NAME"]

WORKER_RUN_NAME = "__fedsync_worker__"
"""``__name__`` of a script a worker process runs to find its ``device_fn`` (not ``"__main__"``)."""

HOW = (
    "define it with def at the top level of a module (e.g. mydevices.py: def device_fn(device_id): ...) "
    "and pass it, or its name: device_fn='mydevices:device_fn'"
)


def locate(device_fn: Any, *, script: bool = True, how: str = HOW) -> tuple[str | None, str | None, str]:
    """Where another process finds ``device_fn``: ``(module, script path, qualified name)``.

    Args:
        device_fn: a module-level function, or its name ``"module:function"``.
        script: whether a function of the script run as ``__main__`` may be found by the
            script's path (a local worker runs the script under another name, as
            multiprocessing's spawn does; a Ray cluster's machines cannot).
        how: what to tell the user to do instead, appended to every error.

    Raises:
        ValueError: a lambda, a nested function, a partial or any callable that
            cannot be found again by its name; a ``__main__`` function when
            ``script`` is false; a string that is not ``"module:function"``.
        TypeError: ``device_fn`` is neither callable nor a string.
        RuntimeError: called from a script a worker process is loading (no ``__main__`` guard).
    """
    module: str | None  # where the name leads: a module's name, or an attribute read off any callable
    name: str | None
    if isinstance(device_fn, str):
        module, sep, name = device_fn.partition(":")
        if not sep or not all(part.isidentifier() for part in [*module.split("."), *name.split(".")]):
            raise ValueError(f"device_fn given by name is 'module:function', got {device_fn[:200]!r}; {how}")
        return module, None, name
    if not callable(device_fn):
        raise TypeError(
            f"device_fn must be a function device_fn(device_id) -> FedData or its name, got {type(device_fn).__name__}"
        )
    module, name = getattr(device_fn, "__module__", None), getattr(device_fn, "__qualname__", None)
    if module == WORKER_RUN_NAME:
        raise RuntimeError(
            "run_simulation ran again while a worker process loaded your script to find device_fn: "
            'put the script\'s work under `if __name__ == "__main__":` (as with multiprocessing), '
            "so that loading it only defines device_fn"
        )
    if not isinstance(module, str) or not isinstance(name, str) or "<" in name:
        raise ValueError(
            f"device_fn {device_fn!r} has no name another process can import (a lambda, a nested function or a "
            f"partial): it is imported by name, never pickled; {how}"
        )
    target: Any = sys.modules.get(module)
    for part in name.split("."):
        target = getattr(target, part, None)
    if target is not device_fn:
        raise ValueError(
            f"device_fn {module}:{name} does not lead back to the function given (was it replaced or decorated?); {how}"
        )
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not script:
            raise ValueError(
                f"device_fn {name} is defined in the script being run (__main__), which other machines cannot "
                f"import; {how}"
            )
        if not isinstance(path, str):
            raise ValueError(
                f"device_fn was defined in an interactive session, which a worker process cannot import; {how}"
            )
        return None, os.path.abspath(path), name
    return module, None, name


def load(name: str, module: str | None = None, path: str | None = None) -> Callable[[int], Any]:
    """The function ``name`` (a qualified name) of ``module``, or of the script at ``path``.

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: no such function in it.
        TypeError: the name is not a function.
    """
    target: Any
    if path is not None:
        # As multiprocessing's spawn does for __main__: run the script under another name,
        # so its `if __name__ == "__main__":` block does not run again here.
        namespace = runpy.run_path(path, run_name=WORKER_RUN_NAME)
        first, _, rest = name.partition(".")
        target = namespace[first]
        for part in rest.split(".") if rest else ():
            target = getattr(target, part)
    else:
        target = importlib.import_module(module or "")
        for part in name.split("."):
            target = getattr(target, part)
    if not callable(target):
        raise TypeError(
            f"{module or path}:{name} is a {type(target).__name__}, not a function device_fn(device_id) -> FedData"
        )
    return target
