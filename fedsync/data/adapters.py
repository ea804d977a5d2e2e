"""What the framework adapters (``fedsync_torch``, ``fedsync_keras``) share beyond :class:`FedArrays`.

Public on purpose: a third-party adapter for another framework needs the same
two things, process-independent architecture text and a pre-check before it
writes arrays into a model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from ..errors import PayloadRejected

__all__ = ["without_addresses", "check_fit"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def without_addresses(text: str) -> str:
    """``text`` without the `` at 0x7f...`` memory addresses of default reprs.

    They differ between processes; a specs fingerprint must not, so every
    repr or config string hashed into an architecture goes through this.
    """
    return _ADDRESS.sub("", text)


def check_fit(arrays: Mapping[str, npt.ArrayLike], shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Check ``arrays`` has exactly the names of ``shapes`` and each its shape, before anything is written.

    ``arrays``: anything ``np.shape`` reads (numpy arrays, framework tensors), by name.
    ``what`` names the model's entries in messages, e.g. ``"tensor"`` or ``"weight"``.

    Raises:
        PayloadRejected: a name is missing or unexpected, or a shape differs;
            the message names it, expected and found.
    """
    if arrays.keys() != shapes.keys():
        missing, extra = sorted(shapes.keys() - arrays.keys()), sorted(arrays.keys() - shapes.keys())
        raise PayloadRejected(f"arrays do not match the model's {what}s: missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        found = tuple(np.shape(arrays[name]))
        if found != tuple(shape):
            raise PayloadRejected(f"{what} {name!r}: expected shape {tuple(shape)}, got {found}")
