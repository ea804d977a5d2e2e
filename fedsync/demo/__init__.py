"""``fedsync demo``: federated learning on scikit-learn's digits across real device processes.

The coordinator splits the data non-IID across N device processes serving on
loopback, runs FedAvg rounds over HTTP with the fastest installed adapter
(numpy; ``--adapter torch`` or ``keras`` for a framework), evaluates each round on a held-out test set, and
compares the result with central training and with each device alone.

``python -m fedsync.demo [options]`` is ``fedsync demo [options]``;
``python -m fedsync.demo device ...`` is one device process (see ``device.py``).
"""

from .data import DemoError
from .runner import DemoConfig, run

__all__ = ["DemoConfig", "DemoError", "run"]
