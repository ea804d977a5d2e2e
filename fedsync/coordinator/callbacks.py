"""``fit`` callbacks that log each round where people already look: TensorBoard, CSV, MLflow.

A callback is ``callback(federated, result)``, called by :meth:`~fedsync.Federated.fit`
after each merged round (returning ``True`` stops the run). The round's number is
its position in ``federated.history`` (1 for the first, counting rounds restored from a
checkpoint), so a resumed run continues its curves. Each writer library is
imported when the callback is created, never by ``import fedsync``::

    from fedsync.coordinator.callbacks import CSVLogger, EarlyStopping, TensorBoard

    federated.fit(50, evaluate_every=5, callbacks=[TensorBoard("runs/exp1"), CSVLogger("runs/exp1.csv")])
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._util.checks import is_int
from .._util.files import write_atomically
from .history import RoundResult

logger = logging.getLogger("fedsync.callbacks")  # the name users configure; not the module path, which may move

if TYPE_CHECKING:
    from .federated import Federated

__all__ = ["EarlyStopping", "TensorBoard", "CSVLogger", "MLflow", "round_scalars"]


class EarlyStopping:
    """A ``fit`` callback that stops when a metric has not improved for ``patience`` measurements.

    Args:
        metric: the metric's name, e.g. ``"accuracy"``.
        patience: measurements of the metric without a new best before stopping (rounds
            where it was measured: with ``fit(evaluate_every=5)``, ``patience=3`` is 15 rounds).
        mode: ``"max"`` (higher is better) or ``"min"``.
        evaluation: read the metric from federated evaluation (else from training);
            ignored when ``source`` is given.
        source: where to read the metric: ``"evaluation"`` (the devices' evaluation,
            ``RoundResult.evaluation``), ``"server"`` (``Federated(evaluate_fn=...)`` on the
            coordinator, ``RoundResult.server_evaluation``) or ``"train"`` (the training
            metrics). Default: ``"evaluation"``, or ``"train"`` with ``evaluation=False``.

    A round whose source was measured without the metric (a misspelt name, or every device
    failed to evaluate) is logged once as a warning: such a callback could never stop the run.

    Raises:
        ValueError: a bad ``mode``, ``source`` or ``patience``.
    """

    SOURCES = ("evaluation", "server", "train")

    def __init__(
        self, metric: str, patience: int = 3, mode: str = "max", evaluation: bool = True, *, source: str | None = None
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if source is None:
            source = "evaluation" if evaluation else "train"
        if source not in self.SOURCES:
            raise ValueError(f"source must be one of {', '.join(map(repr, self.SOURCES))}, got {source!r}")
        if not is_int(patience) or patience < 1:
            raise ValueError(
                f"patience must be a positive integer (measurements without improvement), got {patience!r}"
            )
        self.metric, self.patience, self.mode, self.source = metric, patience, mode, source
        self.evaluation = source == "evaluation"
        self.best: float | None = None
        self.waited = 0
        self._warned = False

    def _measured(self, result: RoundResult) -> dict[str, float] | None:
        """The metrics this round measured in ``source``, or ``None`` when it measured nothing there."""
        if self.source == "train":
            return result.metrics
        measured = result.evaluation if self.source == "evaluation" else result.server_evaluation
        return None if measured is None else measured.metrics

    def __call__(self, federated: Federated, result: RoundResult) -> bool:
        source = self._measured(result)
        if source is None:
            return False
        if self.metric not in source:
            if not self._warned:
                self._warned = True
                found = ", ".join(sorted(source)) or "none: did every device fail to evaluate?"
                logger.warning(
                    "EarlyStopping(%r) found no %r in round %d's %s metrics (found: %s); it cannot stop this run "
                    "until that metric is measured. Check the name, or pass source='evaluation', 'server' or 'train'",
                    self.metric,
                    self.metric,
                    len(federated.history) if hasattr(federated, "history") else result.repetition,  # as people count
                    self.source,
                    found,
                )
            return False
        value = source[self.metric]
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.waited = value, 0
            return False
        self.waited += 1
        return self.waited >= self.patience


def round_scalars(result: RoundResult) -> dict[str, float]:
    """A round's numbers by tag: ``train/<metric>``, ``eval/<metric>`` (the devices' evaluation),
    ``server/<metric>`` (``Federated(evaluate_fn=...)`` on the coordinator), ``round/seconds``,
    ``round/devices_answered``, ``round/devices_failed``, ``round/samples``,
    ``round/bytes_sent``, ``round/bytes_received``, ``eval/seconds`` and ``server/seconds``
    (seconds of wall time, bytes as sent and received by the coordinator)."""
    scalars: dict[str, float] = {f"train/{name}": value for name, value in result.metrics.items()}
    if result.evaluation is not None:
        scalars.update({f"eval/{name}": value for name, value in result.evaluation.metrics.items()})
        scalars["eval/seconds"] = result.evaluation.seconds
    if result.server_evaluation is not None:
        scalars.update({f"server/{name}": value for name, value in result.server_evaluation.metrics.items()})
        scalars["server/seconds"] = result.server_evaluation.seconds
    scalars["round/seconds"] = result.seconds
    scalars["round/devices_answered"] = len(result.answered)
    scalars["round/devices_failed"] = len(result.failures)
    if result.samples is not None:
        scalars["round/samples"] = result.samples
    scalars["round/bytes_sent"] = result.bytes_sent
    scalars["round/bytes_received"] = result.bytes_received
    return {tag: float(value) for tag, value in scalars.items()}


def _missing(what: str, package: str, extra: str) -> ImportError:
    return ImportError(
        f"fedsync.coordinator.callbacks.{what} needs the {package!r} package, which is not installed; "
        f"pip install 'fedsync[{extra}]' (or pip install {package})"
    )


class TensorBoard:
    """Writes every round's scalars (see :func:`round_scalars`) as TensorBoard events.

    Uses ``tensorboardX`` (``pip install 'fedsync[tensorboard]'``); view with
    ``tensorboard --logdir LOGDIR``. The step is the round's number. A round's events
    are on disk (written and flushed) when the callback returns, so a crash loses no
    round that finished; :meth:`close` (or ``with``) releases the file.

    Args:
        logdir: the folder of the event files; a resumed run adds a file beside the old ones.
    """

    def __init__(self, logdir: str | os.PathLike) -> None:
        try:
            import tensorboardX  # noqa: F401  (first: a package set to None in sys.modules is refused here)
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.summary import scalar
        except ImportError:
            raise _missing("TensorBoard", "tensorboardX", "tensorboard") from None
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        # tensorboardX's SummaryWriter queues events for a thread whose flush() does not drain
        # the queue (after fit(3) the file held rounds 1-2): write synchronously instead.
        unique = f".{os.getpid()}.{secrets.token_hex(4)}"  # its file name has whole seconds: two runs in one second
        self._events: EventsWriter | None = EventsWriter(str(self.logdir / "events"), unique)
        self._event, self._scalar = Event, scalar

    def __call__(self, federated: Federated, result: RoundResult) -> None:
        if self._events is None:
            raise ValueError(f"TensorBoard({str(self.logdir)!r}) was closed; create a new one for another run")
        step = len(federated.history)
        now = time.time()
        for tag, value in round_scalars(result).items():
            self._events.write_event(self._event(wall_time=now, step=step, summary=self._scalar(tag, value)))
        self._events.flush()

    def close(self) -> None:
        """Flush and close the event file (a second call does nothing)."""
        events, self._events = self._events, None
        if events is not None:
            events.close()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CSVLogger:
    """Writes one CSV row per round: ``round``, ``repetition``, then every scalar of
    :func:`round_scalars` (a column per metric seen so far; empty where a round has none).

    A resumed run continues the same file: rows of rounds that are being run again
    (written after the checkpoint the run resumed from) are dropped, and the file is
    rewritten whole, atomically, whenever a new column appears.

    Args:
        path: the CSV file; created with its folder if missing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fields: list[str] | None = None
        self._rows: list[dict[str, str]] = []

    def __call__(self, federated: Federated, result: RoundResult) -> None:
        number = len(federated.history)
        row = {"round": str(number), "repetition": str(result.repetition)}
        row.update({tag: _cell(value) for tag, value in round_scalars(result).items()})
        rewrite = False
        if self._fields is None:  # the first round of this process: take over what is on disk
            self._fields, self._rows = self._read()
            kept = [r for r in self._rows if _round_of(r) < number]
            rewrite = len(kept) != len(self._rows)
            self._rows = kept
        new = [name for name in row if name not in self._fields]
        self._fields += new
        self._rows.append(row)
        if rewrite or new or not self.path.exists():
            self._write_all()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self._fields, restval="").writerow(row)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fields = list(reader.fieldnames or [])
        except FileNotFoundError:
            return ["round", "repetition"], []
        if not fields:
            return ["round", "repetition"], []
        if fields[:2] != ["round", "repetition"]:
            raise ValueError(
                f"{self.path} exists and is not a CSVLogger file (its first columns are {fields[:2]}); pass "
                "another path"
            )
        return fields, rows

    def _write_all(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self._fields or [], restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self._rows)
        write_atomically(self.path, text.getvalue().encode("utf-8"))


def _cell(value: float) -> str:
    return str(int(value)) if value.is_integer() and math.isfinite(value) and abs(value) < 2**53 else repr(value)


def _round_of(row: dict[str, str]) -> int:
    try:
        return int(row.get("round") or 0)
    except ValueError:
        return 0


class MLflow:
    """Logs every round's scalars (see :func:`round_scalars`) to an MLflow run, step = round.

    Uses the active MLflow run, or starts one (``pip install 'fedsync[mlflow]'``);
    :meth:`close` ends a run it started. Tags become metric names with ``/``
    (``train/loss``), which MLflow accepts.

    Args:
        experiment: the experiment's name (default: MLflow's current one).
        run_name: the name of a run this callback starts.
        tracking_uri: where MLflow stores runs (default: its own, ``./mlruns`` or ``$MLFLOW_TRACKING_URI``).
    """

    def __init__(
        self, experiment: str | None = None, run_name: str | None = None, tracking_uri: str | None = None
    ) -> None:
        try:
            import mlflow
        except ImportError:
            raise _missing("MLflow", "mlflow", "mlflow") from None
        self.mlflow = mlflow
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        if experiment is not None:
            mlflow.set_experiment(experiment)
        self.run_name = run_name
        self._started = False

    def __call__(self, federated: Federated, result: RoundResult) -> None:
        if self.mlflow.active_run() is None:
            self.mlflow.start_run(run_name=self.run_name)
            self._started = True
        self.mlflow.log_metrics(round_scalars(result), step=len(federated.history))

    def close(self) -> None:
        """End the MLflow run this callback started, if any."""
        if self._started:
            self.mlflow.end_run()
            self._started = False

    def __enter__(self) -> MLflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
