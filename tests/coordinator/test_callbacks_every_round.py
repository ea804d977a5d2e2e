"""Every callback gets every round, and every source of metrics: real event files, CSV and an MLflow sqlite store.

Two faults of one kind (a callback's reader not seeing what the run measured):
``evaluate_fn``'s metrics (``RoundResult.server_evaluation``) never reached the CSV,
TensorBoard or MLflow callbacks; and TensorBoard's last round stayed in tensorboardX's
writer queue after ``flush()`` (after ``fit(3)`` the event file held rounds 1-2).
"""

from __future__ import annotations

import csv
import sys
import types

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.coordinator.callbacks import CSVLogger, MLflow, TensorBoard, round_scalars
from fedsync.coordinator.history import RoundResult, ServerEvaluation


def weights():
    """The coordinator's side of tests/support/devices/basic.py's ``evaluating``."""
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def on_server(model, server_round):
    return {"server_accuracy": 0.5 + server_round / 100}


def test_round_scalars_carry_the_server_evaluation():
    result = RoundResult(repetition=4)
    result.server_evaluation = ServerEvaluation(repetition=4, metrics={"accuracy": 0.9}, seconds=0.25)
    scalars = round_scalars(result)
    assert scalars["server/accuracy"] == 0.9 and scalars["server/seconds"] == 0.25


def test_tensorboard_holds_every_round_before_it_is_closed(devices, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    device = devices("evaluating", 2.0, 5, 10, 0.75)
    board = TensorBoard(tmp_path / "tb")
    try:
        with Federated(weights(), [device.url], evaluate_fn=on_server) as alg:
            alg.fit(3, callbacks=[board], progress=False)
        # Read while the writer is still open: what a crash right now would leave.
        events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 2.0), (3, 2.0)]
        assert [e.step for e in events.Scalars("server/server_accuracy")] == [1, 2, 3]
        assert [round(e.value, 6) for e in events.Scalars("server/server_accuracy")] == [0.51, 0.52, 0.53]
    finally:
        board.close()
    board.close()  # twice: nothing


def test_csv_has_the_server_evaluation_columns(devices, tmp_path):
    device = devices("evaluating", 2.0, 5, 10, 0.75)
    with Federated(weights(), [device.url], evaluate_fn=on_server, evaluate_fn_every=2) as alg:
        alg.fit(2, callbacks=[CSVLogger(tmp_path / "run.csv")], progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run.csv", newline="")))
    assert [r["server/server_accuracy"] for r in rows] == ["", "0.52"]
    assert rows[1]["server/seconds"] != "" and rows[0]["server/seconds"] == ""


@pytest.mark.slow  # mlflow's import and its sqlite store take seconds: the full suite runs it
def test_mlflow_has_the_server_evaluation(devices, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    device = devices("evaluating", 2.0, 5, 10, 0.75)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with (
        Federated(weights(), [device.url], evaluate_fn=on_server) as alg,
        MLflow(experiment="fedsync-server-eval", run_name="r1", tracking_uri=uri) as logger,
    ):
        alg.fit(2, callbacks=[logger], progress=False)
        run_id = mlflow.last_active_run().info.run_id
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run_id, "server/server_accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.51), (2, 0.52)]
