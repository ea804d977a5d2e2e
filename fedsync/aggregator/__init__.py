"""Aggregators: nodes of a tree, each a device to its parent and a coordinator of devices of its own.

``Aggregator(data, remotes)`` is a FedData any device serves (docs/aggregators.md). It imports both roles
(the device below it in ``coordinator/``, the coordinator's ``Federated``); neither role imports it.
"""

from .node import Aggregator

__all__ = ["Aggregator"]
