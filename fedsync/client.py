"""The seed's import path for the coordinator: ``from fedsync.client import Federated, Remote``.

The coordinator lives in :mod:`fedsync.coordinator` and the HTTP transport in :mod:`fedsync.transports`;
this module only names them where the original README's code finds them.
"""

from .coordinator.callbacks import EarlyStopping
from .coordinator.federated import Federated
from .coordinator.history import EvaluationResult, History, RoundResult
from .transports.remote import MAX_REPLY, Remote

__all__ = ["Remote", "Federated", "RoundResult", "EvaluationResult", "History", "EarlyStopping", "MAX_REPLY"]
