"""A run's folder records what a replay needs, and :func:`compare_runs` names the first round and field that differ.

Real parts: ``run_simulation`` over ``local://`` devices (the production round), numpy models trained by a
gradient step, FedAvg, checkpoint folders written and read back from disk.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

import fedsync
from fedsync import FedArrays
from fedsync.coordinator import checkpoint
from fedsync.coordinator.history import History, RoundResult
from fedsync.coordinator.replay import Difference, compare_runs, read_run, run_notes
from fedsync.coordinator.simulation import device_id
from fedsync.errors import CheckpointError
from tests.support.replay_runs import device_fn, simulate


def test_a_run_records_what_a_replay_needs(tmp_path):
    history = simulate(tmp_path / "a")
    saved = read_run(tmp_path / "a")
    assert saved.to_json() == history.to_json()
    assert saved.run is not None
    assert (saved.run.seed, saved.run.evaluation_seed, saved.run.fedsync) == (
        7,
        "fedsync evaluation 7",
        fedsync.__version__,
    )
    for row in saved:
        assert len(row.sampled or []) == 3
        assert set(row.configs or {}) == set(row.sampled or [])
        assert all(config == {"lr": 0.05 + 0.01 * (device_id(url) % 3)} for url, config in (row.configs or {}).items())
        assert row.payload_sha256 is not None and row.model_sha256 is not None
    pointer = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    state = (tmp_path / "a" / pointer["folder"] / pointer["state"]).read_bytes()
    assert saved[-1].model_sha256 == pointer["state_sha256"] == hashlib.sha256(state).hexdigest()
    # What round 2 sent is what round 1 merged: the digests agree from one round to the next.
    assert [r.payload_sha256 for r in saved[1:]] == [r.model_sha256 for r in saved[:-1]]


def test_two_identical_seeded_runs_compare_identical(tmp_path):
    simulate(tmp_path / "a")
    simulate(tmp_path / "b")
    assert compare_runs(tmp_path / "a", tmp_path / "b") is None
    assert run_notes(read_run(tmp_path / "a"), read_run(tmp_path / "b")) == []
    first, second = read_run(tmp_path / "a"), read_run(tmp_path / "b")
    assert [r.model_sha256 for r in first] == [r.model_sha256 for r in second]


def test_another_seed_differs_at_the_first_round_sampling_differently(tmp_path):
    first, second = simulate(None, seed=7), simulate(None, seed=8)
    difference = compare_runs(first, second)
    assert isinstance(difference, Difference)
    expected = next(i for i, (a, b) in enumerate(zip(first, second, strict=True), 1) if a.sampled != b.sampled)
    assert (difference.round, difference.field) == (expected, "sampled")
    assert str(first[expected - 1].sampled[0]) in difference.a  # type: ignore[index]
    assert run_notes(first, second)[0] == "seed differs: A 7, B 8"


def test_another_config_differs_at_its_round_naming_the_device(tmp_path):
    def changed(server_round: int, device: str) -> dict[str, float]:
        return {"lr": 0.3 if server_round == 2 else 0.05 + 0.01 * (device_id(device) % 3)}

    first, second = simulate(None), simulate(None, config=changed)
    difference = compare_runs(first, second)
    assert difference is not None
    url = sorted(first[1].configs or {})[0]
    assert (difference.round, difference.field) == (2, f"configs of {url}")
    assert "0.3" in difference.b and "0.3" not in difference.a
    assert str(difference).startswith(f"round 2, configs of {url}: A ")


def test_other_data_differs_in_the_model_digest_first(tmp_path):
    first = simulate(None)
    changed = device_id(sorted(first[1].answered)[0])  # a device of round 2 (round 1 may not sample it)
    second = simulate(None, device_fn=lambda index: device_fn(index, shift=0.5 if index == changed else 0.0))
    difference = compare_runs(first, second)
    assert difference is not None
    at = next(i for i, r in enumerate(first, 1) if f"local://device-{changed}" in (r.answered or []))
    assert (difference.round, difference.field) == (at, "model_sha256")


def test_a_shorter_run_differs_at_the_round_it_lacks(tmp_path):
    difference = compare_runs(simulate(None, rounds=3), simulate(None, rounds=2))
    assert difference == Difference(3, "rounds", "has 3 rounds", "has 2 rounds")


def test_a_failed_device_is_named_before_the_model_digest(tmp_path):
    first = simulate(None, min_results=1)
    target = first[0].sampled[0]  # type: ignore[index]

    def failing_training(index: int) -> FedArrays:
        data = device_fn(index)
        if index == device_id(target):
            data.train = lambda model: (_ for _ in ()).throw(RuntimeError("out of memory"))  # type: ignore[attr-defined]
        return data

    difference = compare_runs(first, simulate(None, min_results=1, device_fn=failing_training))
    assert difference is not None and (difference.round, difference.field) == (1, "answered")
    assert target in difference.a and difference.b == "alone merged []"


def test_a_device_that_fails_its_handshake_was_sent_no_config(tmp_path):
    first = simulate(None, min_results=1)
    target = first[0].sampled[0]  # type: ignore[index]

    def failing(index: int) -> FedArrays:
        if index == device_id(target):
            raise RuntimeError("this device's disk is gone")
        return device_fn(index)

    difference = compare_runs(first, simulate(None, min_results=1, device_fn=failing))
    assert difference is not None and (difference.round, difference.field) == (1, f"configs of {target}")
    assert difference.b == "sent it none"


# -- old histories, and hostile or damaged records ------------------------------------------------------------


OLD_ROW = {"repetition": 1, "answered": ["http://a"], "failures": {}, "samples": 3, "metrics": {}, "seconds": 0.1}


def test_a_history_written_before_loads_and_cannot_be_replayed():
    old = History.from_json(json.dumps({"rounds": [OLD_ROW]}))
    assert old.run is None and old[0].sampled is None and old[0].model_sha256 is None
    with pytest.raises(ValueError, match="neither run records the sampled devices"):
        compare_runs(old, old)
    new = simulate(None, rounds=1)
    difference = compare_runs(old, new)
    assert difference is not None and (difference.field, difference.a) == ("sampled", "records none")
    assert run_notes(old, new) == ["A records no seed or fedsync version (written by an older fedsync)"]


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampled": "http://a"}, "round 1: sampled must be a list of device URLs"),
        ({"sampled": [1]}, "round 1: sampled must be a list of device URLs"),
        ({"payload_sha256": "AB" * 32}, "round 1: payload_sha256 must be null or 64 lowercase hex digits"),
        ({"model_sha256": SHA + "0"}, "round 1: model_sha256 must be null or 64 lowercase hex"),
        ({"model_sha256": 5}, "model_sha256 must be null or 64 lowercase hex digits, got 5"),
        ({"configs": []}, "round 1: configs must map device URLs to configurations"),
        ({"configs": {"http://a": {"o": {"deep": {"er": 1}}}}}, "is a dict inside a dict"),
        ({"configs": {"http://a": {"lr": None}}}, r"configs\['http://a'\]\['lr'\] is a NoneType"),
        ({"configs": {"http://a": {"k": ["x" * 40] * 250}}}, "over MAX_CONFIG_BYTES"),
        ({"configs": {"http://a": 3}}, "must be a dict of names"),
    ],
)
def test_a_hostile_round_record_is_refused_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        History.from_json(json.dumps({"rounds": [{**OLD_ROW, **change}]}))


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"seed": 1, "extra": 2}, "run must be a JSON object of keys among seed"),
        ([1], "run must be a JSON object"),
        ({"seed": 2**1100}, "run seed must be null, an integer or a string"),
        ({"seed": "s" * 201}, "run seed must be null, an integer or a string of at most 200"),
        ({"seed": 1.5}, "run seed must be null"),
        ({"evaluation_seed": 3}, "run evaluation_seed must be null or a string"),
        ({"fedsync": None}, "run fedsync must be a version string"),
        ({"fedsync": "1" * 101}, "run fedsync must be a version string"),
    ],
)
def test_a_hostile_run_record_is_refused(run, message):
    with pytest.raises(ValueError, match=message):
        History.from_json(json.dumps({"rounds": [OLD_ROW], "run": run}))


def test_a_run_record_is_read_as_strict_json():
    text = '{"rounds": [], "run": {"seed": 1, "seed": 2}}'
    with pytest.raises(ValueError, match="history has the key 'seed' twice"):
        History.from_json(text)
    with pytest.raises(ValueError, match="history holds NaN"):
        History.from_json(json.dumps({"rounds": [{**OLD_ROW, "configs": {"http://a": {"lr": float("nan")}}}]}))
    with pytest.raises(ValueError, match="history must be a JSON object"):
        History.from_json(json.dumps({"rounds": [], "runs": {}}))


def test_a_long_or_odd_seed_is_recorded_bounded(tmp_path):
    from fedsync.coordinator.replay import run_record

    record = run_record("x" * 10_000)
    assert (
        isinstance(record.seed, str)
        and len(record.seed) <= 200
        and record.seed.endswith(hashlib.sha256(b"x" * 10_000).hexdigest())
    )
    assert record.evaluation_seed is not None and len(record.evaluation_seed) <= 400
    assert run_record(b"raw").seed == "b'raw'"
    assert History.from_json(History([RoundResult(1)], record).to_json()).run == record  # it loads back


def test_an_edited_history_in_a_run_folder_is_refused(tmp_path):
    simulate(tmp_path / "a", rounds=1)
    pointer = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    saved = tmp_path / "a" / pointer["folder"] / "history.json"
    saved.write_text(saved.read_text().replace('"sampled": [', '"sampled": ["local://device-99", ', 1))
    with pytest.raises(CheckpointError, match="history.json does not match the sha256 in checkpoint.json"):
        compare_runs(tmp_path / "a", tmp_path / "a")


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint.json: not a checkpoint folder"):
        read_run(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist; name a checkpoint folder"):
        read_run(tmp_path / "missing")
    (tmp_path / "a.json").write_text('{"rounds": [], "rounds": []}')
    with pytest.raises(ValueError, match="a.json is not a history: history has the key 'rounds' twice"):
        read_run(tmp_path / "a.json")


def test_a_history_file_is_read_bounded_and_never_through_a_link(tmp_path, monkeypatch):
    history = simulate(None, rounds=1)
    history.save(tmp_path / "a.json")
    assert compare_runs(tmp_path / "a.json", history) is None  # a History.save file is a run's record too
    (tmp_path / "link.json").symlink_to(tmp_path / "a.json")
    with pytest.raises(ValueError, match="symbolic link"):
        read_run(tmp_path / "link.json")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="not a regular file"):
        read_run(tmp_path / "fifo.json")  # refused without waiting for a writer
    monkeypatch.setattr("fedsync.coordinator.history.MAX_HISTORY_BYTES", 100)
    with pytest.raises(ValueError, match="over the 100 bytes"):
        read_run(tmp_path / "a.json")


def test_a_run_folder_over_the_history_limit_is_refused_unread(tmp_path, monkeypatch):
    simulate(tmp_path / "a", rounds=1)
    monkeypatch.setattr(checkpoint, "HISTORY_LIMIT", 100)
    with pytest.raises(CheckpointError, match="bytes, over the 100"):
        read_run(tmp_path / "a")


@pytest.mark.slow
def test_threads_and_worker_processes_record_the_same_run(tmp_path):
    simulate(tmp_path / "threads")
    simulate(tmp_path / "processes", worker_kind="processes", workers=2)
    assert compare_runs(tmp_path / "threads", tmp_path / "processes") is None


@pytest.mark.slow
def test_a_rerun_over_real_http_devices_matches(tmp_path):
    from fedsync import Federated
    from tests.support.devices.basic import zeros
    from tests.support.processes import start_device, stop_all

    started = []
    try:
        started += [start_device("constant", v, n) for v, n in ((1.0, 10), (2.5, 30), (-4.0, 7), (0.5, 3))]
        urls = [d.url for d in started]
        for folder in ("a", "b"):  # the second run's repetitions continue above the first's: not compared
            with Federated(zeros(), urls, devices_per_round=3, seed=5, checkpoint=tmp_path / folder, timeout=60) as fed:
                fed.fit(3, progress=False)
        first, second = read_run(tmp_path / "a"), read_run(tmp_path / "b")
        assert [r.repetition for r in second] != [r.repetition for r in first]
        assert compare_runs(first, second) is None
        assert all(len(r.sampled or []) == 3 and r.model_sha256 for r in first)
    finally:
        stop_all(started)
