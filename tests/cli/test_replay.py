"""``fedsync replay A B``: "identical" and exit 0, the first differing round and field and exit 1, a damaged
record refused with its cause and exit 2. Real runs (``run_simulation``) written to checkpoint folders."""

from __future__ import annotations

import json

import pytest

from fedsync.cli import main
from tests.support.replay_runs import simulate


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    simulate(folder / "a", seed=3)
    simulate(folder / "b", seed=3)
    simulate(folder / "c", seed=4)
    return folder


def replay(capsys: pytest.CaptureFixture, *paths: object) -> tuple[int, str, str]:
    code = main(["replay", *map(str, paths)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_rerun_with_the_same_seed_is_identical(runs, capsys):
    code, out, err = replay(capsys, runs / "a", runs / "b")
    assert (code, err) == (0, "")
    assert out == "identical: 3 rounds (sampled devices, configs, payload and model digests)\n"


def test_a_run_with_another_seed_differs_at_a_named_round_and_field(runs, capsys):
    code, out, _ = replay(capsys, runs / "a", runs / "c")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "note: seed differs: A 3, B 4"
    assert lines[-1].startswith("differ: round ") and ", sampled: A [" in lines[-1]


def test_a_history_file_compares_with_a_run_folder(runs, capsys, tmp_path):
    from fedsync.coordinator.replay import read_run

    read_run(runs / "b").save(tmp_path / "b.json")
    code, out, _ = replay(capsys, runs / "a", tmp_path / "b.json")
    assert code == 0 and out.startswith("identical: 3 rounds")


def test_an_edited_record_is_refused_naming_the_file(runs, capsys, tmp_path):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"repetition": 3, "folder": "../elsewhere"}))
    code, out, err = replay(capsys, runs / "a", tmp_path)
    assert (code, out) == (2, "")
    assert err.startswith(
        f"fedsync replay: error: checkpoint {tmp_path} is damaged or was edited: checkpoint.json lacks"
    )


def test_a_missing_run_is_refused(runs, capsys, tmp_path):
    code, _, err = replay(capsys, tmp_path / "nothing", runs / "a")
    assert code == 2 and "does not exist; name a checkpoint folder" in err


def test_the_command_needs_two_runs(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["replay", "only-one"])
    assert exited.value.code == 2
    assert "the following arguments are required: B" in capsys.readouterr().err
