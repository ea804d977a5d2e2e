"""How a simulated device's ``device_fn`` reaches another process: by name when it has one, else by value.

The process workers of :func:`fedsync.coordinator.simulation.run_simulation` (``worker_kind="processes"``)
and the Ray backend (:mod:`fedsync_ray`) ship ``device_fn`` as a name, ``"module:qualname"`` (or a script's
path), when another process can import it: no pickling when it is not needed. A function with no such name (a
lambda, a closure, a function defined in a notebook, in ``python -c`` or in a script read from standard input)
travels *by value*, serialized with cloudpickle (:func:`ship`), in one direction only: from the coordinator to
the worker processes or Ray actors it starts itself. That is the user's own code going to the user's own
processes, as Ray ships every task; nothing a device, a peer or a worker sends back is ever unpickled (a worker
answers in JSON-headed frames, checked like an HTTP reply). See docs/security.md, "Device functions by value".
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["locate", "load", "ship", "unpickle", "Shipment", "WORKER_RUN_NAME", "PICKLERS"]

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
        # A worker finds it by running the script again, so it must come from a script on disk: not a notebook,
        # `python -c`, or a script read from standard input (whose __file__ is '<stdin>').
        filename = getattr(getattr(device_fn, "__code__", None), "co_filename", None)
        if not (isinstance(path, str) and isinstance(filename, str) and _same_file(path, filename)):
            raise ValueError(
                f"device_fn {name} was defined in an interactive session, a notebook or a script read from standard "
                f"input, which a worker process cannot import; {how}"
            )
        return None, os.path.abspath(path), name
    return module, None, name


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.isfile(a) and os.path.samefile(a, b)
    except OSError:
        return False


PICKLERS = {"cloudpickle": "pip install 'fedsync[sim]'", "ray.cloudpickle": "pip install 'fedsync[ray]'"}
"""The libraries that may serialize a device function by value, and the pip command that installs each.
``ray.cloudpickle`` is Ray's own copy of cloudpickle, present wherever Ray is (on every machine of a cluster)."""


class Shipment(NamedTuple):
    """How ``device_fn`` reaches another process (:func:`ship`): by name, or by value when ``pickled`` is set."""

    module: str | None
    """The module to import it from (by name), else ``None``."""
    path: str | None
    """The script to run (a function of the script run as ``__main__``), else ``None``."""
    name: str
    """Its qualified name (by value: shown in messages only)."""
    pickled: bytes | None = None
    """The function serialized by value (cloudpickle), when it has no name another process can import."""


def ship(
    device_fn: Any, *, script: bool = True, pickler: str = "cloudpickle", how: str = HOW
) -> Shipment:  # fmt: skip
    """How ``device_fn`` travels from the coordinator to the worker processes or Ray actors it starts.

    By name (module or script path, and qualified name) when another process can find it so; else, for a
    lambda, a closure, a partial, a callable object, or a function defined in a notebook, ``python -c`` or a
    script read from standard input, by value: serialized here with ``pickler`` (cloudpickle), what it
    captures included (a closure's data is copied to each worker once). Only the coordinator's own code, to
    the processes it starts, ever travels this way; replies are never unpickled.

    Args:
        device_fn: ``device_fn(device_id) -> FedData``, or its name ``"module:function"``.
        script: as for :func:`locate` (false: a ``__main__`` function goes by value).
        pickler: a key of :data:`PICKLERS`: ``"cloudpickle"`` for worker processes, ``"ray.cloudpickle"`` for Ray.
        how: what to tell the user to do instead, appended to every error.

    Raises:
        ValueError: a malformed name ``"module:function"``, or an unknown ``pickler``.
        TypeError: ``device_fn`` is neither callable nor a string, or it captures what cannot be serialized
            (a lock, an open file, a socket).
        ImportError: it must go by value and ``pickler`` is not installed (the message names the pip command).
        RuntimeError: as for :func:`locate`.
    """
    if pickler not in PICKLERS:
        raise ValueError(f"pickler must be one of {sorted(PICKLERS)}, got {pickler!r}")
    if isinstance(device_fn, str) or not callable(device_fn):
        return Shipment(*locate(device_fn, script=script, how=how))
    try:
        return Shipment(*locate(device_fn, script=script, how=how))
    except ValueError:
        pass  # no name another process can find: by value
    name = str(getattr(device_fn, "__qualname__", None) or type(device_fn).__name__)[:200]
    try:
        dumps = importlib.import_module(pickler).dumps
    except ImportError as exc:
        raise ImportError(
            f"device_fn {name} has no name another process can import (a lambda, a closure, a function of a "
            f"notebook or of a script read from standard input), so it travels to the workers by value, serialized "
            f"with {pickler}, which cannot be imported ({str(exc)[:200]}): {PICKLERS[pickler]}; or {how}"
        ) from None
    try:
        pickled = dumps(device_fn)
    except Exception as exc:  # noqa: BLE001 - pickle raises TypeError, PicklingError, AttributeError...
        raise TypeError(
            f"device_fn {name} has no name another process can import, and {pickler} cannot serialize it "
            f"({type(exc).__name__}: {str(exc)[:300]}): it captures something that cannot travel to another process "
            f"(a lock, an open file, a socket, a model on a GPU?); create that inside device_fn, or {how}"
        ) from None
    return Shipment(None, None, name, bytes(pickled))


def unpickle(pickled: bytes, pickler: str = "cloudpickle") -> Callable[[int], Any]:
    """The device function :func:`ship` serialized, in a worker process or Ray actor the coordinator started.

    Only ever called on bytes the coordinator itself sent to the process it started (its command line says
    how many), never on anything a device or a peer sent.

    Raises:
        ValueError: an unknown ``pickler``.
        ImportError: ``pickler`` is not installed here, or the function needs a module that is not.
        TypeError: what was sent is not callable.
    """
    if pickler not in PICKLERS:
        raise ValueError(f"pickler must be one of {sorted(PICKLERS)}, got {pickler!r}")
    try:
        loads = importlib.import_module(pickler).loads
    except ImportError:
        raise ImportError(f"{pickler} is not installed where device_fn runs: {PICKLERS[pickler]}") from None
    target = loads(pickled)
    if not callable(target):
        raise TypeError(f"device_fn sent by value is a {type(target).__name__}, not a function")
    return target


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
