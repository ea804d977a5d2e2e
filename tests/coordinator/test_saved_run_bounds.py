"""Reading a saved run takes memory bounded by a small multiple of its files, and refuses files
that are not regular files inside the run's folder: the dashboard, ``History.load`` and a checkpoint
resume alike (issue #22, kind 3).

Each hostile file below is what a dense JSON file costs once Python parses it: ``{},`` is 3
bytes and a 64-byte dict, ``"ab",`` 5 bytes and a 50-byte string, a round ``{"repetition": n}``
17 bytes and a 1 KB round. Before, the dashboard took 130-200 times such a file and a resume
20-32 times; now each is refused (or read) within :data:`BOUND` times its size.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, History, RoundResult
from fedsync._util.files import FileRefused, read_inside, read_regular
from fedsync._util.json import PARSE_MULTIPLE, check_density
from fedsync.coordinator import checkpoint
from fedsync.coordinator.checkpoint import CheckpointError
from fedsync.dashboard.app import FolderRun

BOUND = PARSE_MULTIPLE  # the multiple docs/dashboard.md and docs/security.md state
SIZE = 1_500_000  # bytes of each generated file: large against Python's fixed costs, quick to parse


def rows(text: str) -> str:
    return '{"rounds":[' + text + "]}"


def hostile_histories() -> dict[str, str]:
    """Histories of about SIZE bytes whose parse alone would take 20-200 times their size."""
    n = SIZE
    return {
        "empty objects": rows(",".join(["{}"] * (n // 3))),
        "empty arrays": rows(",".join(["[]"] * (n // 3))),
        "bare rounds": rows(",".join('{"repetition":%d}' % (i + 1) for i in range(n // 20))),
        "short strings": rows('{"repetition":1,"answered":[' + ",".join(['"ab"'] * (n // 5)) + "]}"),
        "dense metrics": rows('{"repetition":1,"metrics":{' + ",".join('"m%05d":1.5' % i for i in range(n // 12)) + "}}"),
        "dense devices": rows(
            '{"repetition":1,"devices":{' + ",".join('"http://%d":{"samples":1}' % i for i in range(n // 25)) + "}}"
        ),
    }


def legit_history(rounds: int = 600, devices: int = 10) -> History:
    urls = [f"http://10.0.0.{j}:8000" for j in range(devices)]
    return History([
        RoundResult(
            repetition=i + 1, answered=urls, metrics={"loss": 0.5, "accuracy": 0.9}, seconds=1.25,
            devices={u: {"samples": 3, "metrics": {"loss": 0.5}} for u in urls},
        )
        for i in range(rounds)
    ])  # fmt: skip


def peak(call) -> tuple[int, object]:
    """Peak bytes Python allocated while ``call()`` ran, and what it returned or raised."""
    tracemalloc.start()
    try:
        try:
            outcome: object = call()
        except Exception as exc:  # the refusal is the outcome
            outcome = exc
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


def folder_with(folder: Path, history: str) -> Path:
    (folder / "round-000001").mkdir(parents=True, exist_ok=True)
    (folder / "round-000001" / "history.json").write_text(history)
    (folder / "checkpoint.json").write_text(json.dumps({"repetition": 1, "folder": "round-000001"}))
    return folder


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
@pytest.mark.parametrize("shape", sorted(hostile_histories()))
def test_the_dashboard_reads_a_dense_history_within_the_bound(shape, tmp_path):
    text = hostile_histories()[shape]
    folder = folder_with(tmp_path / "run", text)
    used, view = peak(lambda: FolderRun(folder).snapshot())
    assert used < BOUND * len(text), f"{shape}: {used / len(text):.1f} times the file"
    assert view.note is None or "cannot read the checkpoint" in view.note


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
@pytest.mark.parametrize("shape", sorted(hostile_histories()))
def test_history_from_json_reads_or_refuses_a_dense_history_within_the_bound(shape):
    text = hostile_histories()[shape]
    used, outcome = peak(lambda: History.from_json(text))
    assert used < BOUND * len(text), f"{shape}: {used / len(text):.1f} times the file"
    if shape in ("empty objects", "empty arrays", "bare rounds", "short strings"):
        assert isinstance(outcome, ValueError) and "refusing it" in str(outcome), outcome


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_a_history_fedsync_writes_still_reads_within_the_bound(tmp_path):
    history = legit_history()
    history.save(tmp_path / "history.json")
    size = (tmp_path / "history.json").stat().st_size
    check_density((tmp_path / "history.json").read_bytes(), "history.json")  # passes
    used, loaded = peak(lambda: History.load(tmp_path / "history.json"))
    assert isinstance(loaded, History) and len(loaded) == 600 and loaded[-1].metrics == {"loss": 0.5, "accuracy": 0.9}
    assert used < BOUND * size
    folder = folder_with(tmp_path / "run", history.to_json())
    used, view = peak(lambda: FolderRun(folder).snapshot())
    assert view.note is None and len(view.rounds) == 600 and used < BOUND * size


def test_the_refusal_names_the_file_and_the_cause(tmp_path):
    folder = folder_with(tmp_path / "run", hostile_histories()["empty objects"])
    note = FolderRun(folder).snapshot().note
    assert "history.json holds 500002 JSON objects or arrays in" in note and "refusing it" in note
    (tmp_path / "h.json").write_text(hostile_histories()["bare rounds"])
    with pytest.raises(ValueError, match=r"h\.json is not a history: history JSON holds 75000 rounds in"):
        History.load(tmp_path / "h.json")


def test_history_load_refuses_a_file_over_its_cap_by_its_size_alone(tmp_path, monkeypatch):
    from fedsync.coordinator import history as history_module

    path = tmp_path / "history.json"
    with open(path, "wb") as f:
        f.truncate(history_module.MAX_HISTORY_BYTES + 1)  # sparse: refused without a byte read
    used, outcome = peak(lambda: History.load(path))
    assert isinstance(outcome, FileRefused) and f"over the {history_module.MAX_HISTORY_BYTES} bytes" in str(outcome)
    assert used < 1 << 20


# -- checkpoint resume ----------------------------------------------------------------------


def model() -> FedArrays:
    data = FedArrays({"w": np.zeros((64, 64), np.float32), "b": np.zeros(64, np.float32)})
    data.samples = 10  # a merged model's count: what the coordinator saves after a round
    return data


def saved_checkpoint(folder: Path) -> Path:
    checkpoint.save(folder, model(), 1, History([RoundResult(repetition=1, seconds=1.0)]))
    return folder


def replace(folder: Path, name: str, raw: bytes, key: str) -> None:
    """Put ``raw`` in the round's ``name`` with a matching sha256, as someone who rewrites both would."""
    (folder / "round-000001" / name).write_bytes(raw)
    meta = json.loads((folder / "checkpoint.json").read_text())
    meta[key] = hashlib.sha256(raw).hexdigest()
    (folder / "checkpoint.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "shape", ["empty objects", "bare rounds", pytest.param("dense devices", marks=pytest.mark.slow)]  # 1.5 s
)
def test_a_resume_refuses_a_dense_history_within_the_bound(shape, tmp_path):
    folder = saved_checkpoint(tmp_path / "run")
    text = hostile_histories()[shape].encode()
    replace(folder, "history.json", text, "history_sha256")
    data = model()
    used, outcome = peak(lambda: checkpoint.load(folder, data))
    if shape != "dense devices":  # that one is a history of repetition 1: read, within the bound
        assert isinstance(outcome, CheckpointError), outcome
        assert "history.json is malformed" in str(outcome) and "refusing it" in str(outcome)
    assert used < BOUND * len(text), f"{shape}: {used / len(text):.1f} times the file"


def test_a_resume_refuses_a_state_file_far_beyond_the_models_size_before_reading_it(tmp_path):
    folder = saved_checkpoint(tmp_path / "run")
    state = folder / "round-000001" / "state.safetensors"
    with open(state, "ab") as f:
        f.truncate(300 << 20)  # 300 MiB for a 16 KiB model (sparse)
    used, outcome = peak(lambda: checkpoint.load(folder, model()))
    assert isinstance(outcome, CheckpointError) and "state.safetensors is 314572800 bytes, over the" in str(outcome)
    assert used < 4 << 20


def test_a_resume_refuses_a_strategy_file_far_beyond_the_models_size_before_reading_it(tmp_path):
    from fedsync.strategies import FedAdam

    def adam() -> FedArrays:
        data = FedArrays({"w": np.zeros((64, 64), np.float32)}, strategy=FedAdam())
        data.samples = 10
        return data

    data = adam()
    checkpoint.save(tmp_path / "run", data, 1, History([RoundResult(repetition=1)]))
    replace(tmp_path / "run", "strategy.safetensors", b"\0" * (20 << 20), "strategy_sha256")
    used, outcome = peak(lambda: checkpoint.load(tmp_path / "run", adam()))
    assert isinstance(outcome, CheckpointError) and "strategy.safetensors is 20971520 bytes, over the" in str(outcome)
    assert used < 4 << 20


def test_a_resume_of_a_checkpoint_fedsync_wrote_still_works(tmp_path):
    folder = tmp_path / "run"
    checkpoint.save(folder, model(), 600, legit_history())
    repetition, history = checkpoint.load(folder, model())
    assert repetition == 600 and len(history) == 600


# -- only regular files inside the folder -----------------------------------------------------


def within(seconds: float, call):
    """``call()`` in a thread; its outcome, or a failure if it is still blocked after ``seconds``."""
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for {seconds}s: a FIFO was opened for reading"
    return box[0]


@pytest.mark.parametrize("name", ["checkpoint.json", "round-000001/history.json", "run.json"])
def test_the_dashboard_refuses_a_fifo_without_blocking(name, tmp_path):
    folder = folder_with(tmp_path / "run", json.dumps({"rounds": [{"repetition": 1, "seconds": 2.0}]}))
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    view = within(30, FolderRun(folder).snapshot)
    if name != "run.json":  # run.json only adds the plan: the rounds still show
        assert "is not a regular file (a FIFO" in view.note
    else:
        assert view.note is None and len(view.rounds) == 1


@pytest.mark.parametrize("link", ["checkpoint.json", "round-000001", "round-000001/history.json", "run.json"])
def test_the_dashboard_follows_no_symbolic_link_out_of_the_folder(link, tmp_path):
    outside = folder_with(tmp_path / "elsewhere", json.dumps({"rounds": [{"repetition": 1, "seconds": 9.0}]}))
    (outside / "run.json").write_text(json.dumps({"rounds": 7}))
    folder = folder_with(tmp_path / "run", json.dumps({"rounds": []}))
    target = folder / link
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink(missing_ok=True)
    target.symlink_to(outside / link)
    view = FolderRun(folder).snapshot()
    assert [r["seconds"] for r in view.rounds] != [9.0] and view.planned != 7
    if link != "run.json":
        assert "symbolic link" in view.note, view.note


def test_read_inside_refuses_paths_that_leave_the_folder(tmp_path):
    (tmp_path / "secret").write_text("x")
    (tmp_path / "run").mkdir()
    for relative in ("../secret", "/etc/passwd", "."):
        with pytest.raises(FileRefused, match="is not a file inside"):
            read_inside(tmp_path / "run", relative, 100)
    (tmp_path / "run" / "big").write_bytes(b"y" * 101)
    with pytest.raises(FileRefused, match="is 101 bytes, over the 100 bytes"):
        read_inside(tmp_path / "run", "big", 100)
    assert read_inside(tmp_path / "run", "big", 101) == b"y" * 101


def test_history_load_refuses_a_fifo_and_a_link_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    outcome = within(30, lambda: pytest.raises(FileRefused, History.load, tmp_path / "fifo.json"))
    assert "not a regular file" in str(outcome.value)
    legit_history(2).save(tmp_path / "real.json")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    with pytest.raises(FileRefused, match="symbolic link"):
        History.load(tmp_path / "link.json")
    with pytest.raises(FileRefused, match="symbolic link"):
        read_regular(tmp_path / "link.json", 1 << 20)
