"""How the devices' arrays are combined into the coordinator's: FedAvg and the strategies Flower users know.

A strategy gets the coordinator's current arrays (for shapes and dtypes, or for
server-side optimizers) and the replies in arrival order. It never modifies the
current arrays: it returns new ones, which the caller assigns only once the whole
round has arrived.

- Streaming (fold each reply into a running mean as it downloads): :class:`FedAvg`
  (default), :class:`FedAvgM`, :class:`FedAdam`, :class:`FedYogi`, :class:`FedAdagrad`.
- Every reply (kept in RAM, spilled to disk past ``spill_bytes``): :class:`FedMedian`,
  :class:`FedTrimmedAvg`, :class:`Krum`, :class:`MultiKrum`, :class:`Bulyan`.
- Device state, streaming: :class:`Scaffold` (control variates) and :class:`FedNova` (normalized
  averaging), with their device-side helpers in :mod:`~fedsync.strategies.scaffold` and
  :mod:`~fedsync.strategies.fednova` (docs/strategies.md).
- Central differential privacy around FedAvg or a server optimizer (whole replies,
  one at a time): :class:`DPFixedClipping`, :class:`DPAdaptiveClipping` (docs/privacy.md).

Integer and boolean arrays: FedAvg's exact weighted mean (rounded half to even;
booleans the weighted majority) in streaming strategies, the exact median in
robust ones. docs/strategies.md compares them all.
"""

from . import fednova, scaffold
from .base import Accumulator, FedAvg, Strategy, WeightedSum
from .dp import DPAdaptiveClipping, DPFixedClipping
from .fednova import FedNova
from .optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from .robust import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from .scaffold import Scaffold

__all__ = [
    "Strategy",
    "Accumulator",
    "WeightedSum",
    "FedAvg",
    "FedAvgM",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "Scaffold",
    "FedNova",
    "scaffold",
    "fednova",
    "DPFixedClipping",
    "DPAdaptiveClipping",
]
