"""What the demo shows and writes: the round table, the comparison, history.json, the plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROUND_HEADER",
    "round_line",
    "comparison_lines",
    "write_history",
    "write_plot",
    "plot_figure",
    "round_ticks",
    "device_line",
]

ROUND_HEADER = f"{'round':>5}  {'devices':>7}  {'samples':>7}  {'train loss':>10}  {'test acc':>8}  {'seconds':>7}"


def round_line(row: dict[str, Any]) -> str:
    """One row of the per-round table."""
    loss = row.get("train_loss")
    loss_text = f"{loss:10.4f}" if loss is not None else f"{'-':>10}"
    return (
        f"{row['round']:>5}  {row['devices']:>7}  {_or_dash(row['samples']):>7}  {loss_text}  "
        f"{row['test_accuracy']:8.3f}  {row['seconds']:7.2f}"
    )


def device_line(index: int, url: str, pid: int, counts: Sequence[int]) -> str:
    """A device, its process and its label counts (what makes the split non-IID)."""
    labels = " ".join(f"{c:>3}" for c in counts)
    return f"  device {index}  {url}  pid {pid:<7}  {sum(counts):>4} samples  labels 0-9: {labels}"


def comparison_lines(federated: float, central: float, alone: Sequence[float], devices: int, rounds: int) -> list[str]:
    """The final comparison table and the sentence saying why it matters."""
    mean = sum(alone) / len(alone)
    width = 36
    lines = [
        f"{'model':<{width}}  test accuracy",
        f"{f'federated ({devices} devices, {rounds} rounds)':<{width}}  {federated:13.3f}",
        f"{'central (all training data pooled)':<{width}}  {central:13.3f}",
        f"{'each device alone (mean)':<{width}}  {mean:13.3f}   range {min(alone):.3f} to {max(alone):.3f}",
        "",
        f"A device training alone sees only its own skewed share of the labels ({mean:.1%} on average); "
        f"federated training reaches {federated:.1%}, {_gap(federated, central)} pooling all the data in one place, "
        "without any device's data leaving it: closing that gap is the point of federated learning.",
    ]
    return lines


def _gap(federated: float, central: float) -> str:
    points = (central - federated) * 100
    if points <= 0:
        return "as good as"
    return f"{points:.1f} points short of"


def write_history(path: Path, history: dict[str, Any]) -> None:
    path.write_text(json.dumps(history, indent=2) + "\n")


def round_ticks(first: int, last: int, most: int = 10) -> list[int]:
    """Where the x-axis labels rounds: ``first``, ``last`` and evenly spaced round numbers between.

    Matplotlib's own integer ticks (0, 5, 10, ... for 1 to 20) leave the first and
    last round unlabelled. The step is 1, 2 or 5 times a power of ten, so that
    at most ``most`` ticks show; one that would crowd an end is dropped.
    """
    span = max(last - first, 1)
    step = 1
    while span / step > most - 2:
        step = _next_step(step)
    inner = [r for r in range((first // step + 1) * step, last, step) if r - first > step / 2 and last - r > step / 2]
    return sorted({first, *inner, last})


def _next_step(step: int) -> int:
    """The step after ``step`` in 1, 2, 5, 10, 20, 50, ..."""
    return step * 5 // 2 if str(step)[0] == "2" else step * 2


def write_plot(path: Path, rows: list[dict[str, Any]], central: float, alone: Sequence[float], title: str) -> bool:
    """Accuracy and loss per round as a PNG; ``False`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = plot_figure(plt, rows, central, alone, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_figure(plt: Any, rows: list[dict[str, Any]], central: float, alone: Sequence[float], title: str) -> Any:
    """The figure :func:`write_plot` saves: accuracy and loss against the round (``plt``: ``matplotlib.pyplot``)."""
    rounds = [r["round"] for r in rows]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    acc_ax.plot(rounds, [r["test_accuracy"] for r in rows], marker="o", ms=3, label="federated, test")
    if all(r.get("train_accuracy") is not None for r in rows):
        acc_ax.plot(rounds, [r["train_accuracy"] for r in rows], ls="--", label="devices, train")
    acc_ax.axhline(central, color="tab:green", ls=":", label=f"central ({central:.3f})")
    mean = sum(alone) / len(alone)
    acc_ax.axhline(mean, color="tab:red", ls=":", label=f"device alone, mean ({mean:.3f})")
    acc_ax.axhspan(min(alone), max(alone), color="tab:red", alpha=0.08, label="device alone, range")
    acc_ax.set(xlabel="round", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    ticks = round_ticks(rounds[0], rounds[-1])
    for axis in (acc_ax, loss_ax):
        axis.set_xticks(ticks)
    acc_ax.legend(loc="lower right", fontsize="small")
    loss_ax.plot(rounds, [r["test_loss"] for r in rows], marker="o", ms=3, label="federated, test")
    if all(r.get("train_loss") is not None for r in rows):
        loss_ax.plot(rounds, [r["train_loss"] for r in rows], ls="--", label="devices, train")
    loss_ax.set(xlabel="round", ylabel="cross-entropy", title="loss")
    loss_ax.legend(loc="upper right", fontsize="small")
    fig.suptitle(title)
    return fig


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value
