"""fit callbacks for experiment tracking, over real device processes, read back with each
format's own reader."""

import csv
import sys
import types

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, Federated
from fedsync.coordinator.callbacks import CSVLogger, EarlyStopping, MLflow, TensorBoard


def weights():
    """The coordinator's side of tests/support/devices/basic.py's ``evaluating``."""
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def test_early_stopping_is_in_the_short_list():
    assert EarlyStopping is fedsync.EarlyStopping


def test_tensorboard_scalars_read_back_with_tensorboards_reader(devices, tmp_path, monkeypatch):
    # TensorBoard's reader uses its own TensorFlow stub when this marker module exists (as
    # in TensorBoard's TF-free build), rather than importing TensorFlow for 5-10 s.
    monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    pytest.importorskip("tensorboardX")  # in the 'tensorboard' extra, and so in 'all'
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    device = devices("evaluating", 2.0, 5, 10, 0.75)
    with Federated(weights(), [device.url]) as alg, TensorBoard(tmp_path / "tb") as board:
        alg.fit(3, evaluate_every=2, callbacks=[board], progress=False)
    events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()

    def scalars(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert scalars("train/loss") == [(1, 2.0), (2, 2.0), (3, 2.0)]
    assert scalars("eval/accuracy") == [(2, 0.75)]
    assert scalars("round/devices_answered") == [(1, 1.0), (2, 1.0), (3, 1.0)]
    assert scalars("round/samples") == [(1, 5.0), (2, 5.0), (3, 5.0)]
    assert [step for step, _ in scalars("round/seconds")] == [1, 2, 3]
    assert all(value > 0 for _, value in scalars("round/seconds"))


def test_tensorboard_without_tensorboardx_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'fedsync\[tensorboard\]'"):
        TensorBoard(tmp_path / "tb")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_writes_a_row_per_round_and_continues_on_resume(devices, tmp_path):
    device = devices("evaluating", 2.0, 5, 10, 0.75)
    path, folder = tmp_path / "log" / "rounds.csv", tmp_path / "run"
    with Federated(weights(), [device.url], checkpoint=folder) as alg:
        alg.fit(2, callbacks=[CSVLogger(path)], progress=False)
    rows = read_csv(path)
    assert [(r["round"], r["repetition"], r["train/loss"], r["round/samples"], r["round/devices_answered"]) for r in rows] == [
        ("1", "1", "2", "5", "1"), ("2", "2", "2", "5", "1"),
    ]  # fmt: skip
    assert "eval/accuracy" not in rows[0]
    with open(path, "a", newline="") as f:  # a row of a round the checkpoint does not hold
        f.write("3,3,9,9,9,9,9,9,9\n")

    with Federated(weights(), [device.url], checkpoint=folder) as alg:  # resumed; evaluation in round 4: a new column
        alg.fit(4, evaluate_every=4, callbacks=[CSVLogger(path)], progress=False)
    rows = read_csv(path)
    assert [r["round"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["eval/accuracy"] for r in rows] == ["", "", "", "0.75"]
    assert [r["train/loss"] for r in rows] == ["2"] * 4
    assert float(rows[3]["round/seconds"]) > 0


def test_csv_logger_refuses_to_overwrite_another_file(devices, tmp_path):
    device = devices("evaluating", 2.0, 5, 10, 0.75)
    path = tmp_path / "mine.csv"
    path.write_text("name,score\nada,1\n")
    with Federated(weights(), [device.url]) as alg, pytest.raises(ValueError, match="not a CSVLogger file"):
        alg.fit(1, callbacks=[CSVLogger(path)], progress=False)
    assert path.read_text() == "name,score\nada,1\n"


@pytest.mark.slow  # a few seconds of real waiting: the full suite runs it (fast tier: 90 s budget)
def test_mlflow_metrics_read_back_with_mlflows_client(devices, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    device = devices("evaluating", 2.0, 5, 10, 0.75)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Federated(weights(), [device.url]) as alg, MLflow(experiment="fedsync-test", run_name="r1", tracking_uri=uri) as logger:
        alg.fit(2, evaluate_every=2, callbacks=[logger], progress=False)
        run_id = mlflow.last_active_run().info.run_id
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(1, 2.0), (2, 2.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/accuracy")] == [(2, 0.75)]
