"""fedsync: synchronized federated learning across remote devices.

A device serves a :class:`FedData` with :func:`serve`; the coordinator runs
rounds with :class:`Federated` over :class:`Remote` devices.
"""

from ._version import __version__
from .coordinator.callbacks import EarlyStopping
from .coordinator.federated import Federated
from .coordinator.history import EvaluationResult, History, RoundResult, ServerEvaluation
from .data.arrays import FedArrays
from .data.bundle import FedBundle
from .device import serve
from .errors import FedSyncError, RoundFailed, SpecsMismatch
from .plugins.hookspecs import hookimpl
from .protocol import FIRST, FedData
from .strategies import FedAvg
from .transports.remote import Remote

__all__ = [
    "__version__",
    "FedData",
    "FIRST",
    "FedArrays",
    "FedBundle",
    "FedAvg",
    "Federated",
    "Remote",
    "RoundResult",
    "EvaluationResult",
    "ServerEvaluation",
    "History",
    "EarlyStopping",
    "serve",
    "FedSyncError",
    "RoundFailed",
    "SpecsMismatch",
    "hookimpl",
]
