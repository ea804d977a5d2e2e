"""What a coordinator does differently when some of its devices are aggregators (docs/aggregators.md).

An aggregator says so in its ``/info`` (``"aggregator": true``). Its reply is the merge of the devices
below it: :func:`tree_refusal` refuses it where that merge cannot be merged again (a strategy that needs
every device's own reply, central DP, secure aggregation), and :func:`record_merge` records the failures
below it, each under its path (``agg-1/site-c``).

Internal: part of :class:`fedsync.Federated`; its names may change without notice.
"""

from __future__ import annotations

from typing import Any

from ..wire.reports import node_name
from .history import RoundResult

__all__ = ["tree_refusal", "record_merge"]


def tree_refusal(url: str, info: dict[str, Any], data: Any, secure_aggregation: Any) -> str | None:
    """Why device ``url`` (its ``/info`` is ``info``) cannot take part in this coordinator's rounds; ``None`` if it can.

    Only a device whose ``/info`` says ``"aggregator": true`` is ever refused here.
    """
    if info.get("aggregator") is not True:
        return None
    lead = f"TreeRefused: {url} is an aggregator, and"
    if secure_aggregation is not None:
        return (
            f"{lead} secure aggregation cannot run across the levels of a tree: the aggregator would have to "
            "unmask its devices' replies to merge them; connect the devices to this coordinator directly for "
            "a secure round. Nothing was sent."
        )
    strategy = getattr(data, "strategy", None)
    if strategy is None:
        return f"{lead} only array FedData (FedArrays and its adapters) merge through a tree. Nothing was sent."
    why = getattr(strategy, "tree_refusal", None)
    if why is not None:
        return (
            f"{lead} {type(strategy).__name__} cannot merge aggregators' replies: {why}. Use FedAvg (or a server "
            "optimizer such as FedAdam) over aggregators, or connect the devices directly. Nothing was sent."
        )
    return None


def record_merge(result: RoundResult, report: Any) -> None:
    """The merge's ``report`` (``FedArrays.last_merge``) into ``result``: samples, metrics, each device's row.

    An aggregator's row names the devices below it that failed: each goes to ``result.failures`` under the
    aggregator's name and its path, ``agg-1/site-c``. A report that does not list one row per answering
    device (a FedData of another kind) leaves ``result`` as it is.
    """
    if not isinstance(report, dict) or len(report.get("devices", ())) != len(result.answered):
        return
    result.samples = report.get("samples")
    result.metrics = dict(report.get("metrics", {}))
    result.devices = {}
    for url, row in zip(result.answered, report["devices"], strict=False):  # lengths compared above
        result.devices[url] = {"samples": row["samples"], "metrics": row["metrics"]}
        for path, why in row.get("below", {}).items():
            result.failures[f"{node_name(url)}/{path}"] = why
