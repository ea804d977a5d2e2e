"""The run files the dashboard reads are strict JSON: a key given twice or NaN is refused, naming it,
and the dashboard keeps showing what it last knew."""

import json

from fedsync.dashboard.app import FolderRun


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


ROW = {"repetition": 1, "answered": ["http://10.0.0.1:8000"], "failures": {}, "metrics": {"loss": 0.5}, "seconds": 1.0}


def test_a_history_or_pointer_with_a_key_twice_or_a_constant_is_refused_and_the_last_view_kept(tmp_path):
    folder = tmp_path / "run"
    write(folder / "round-000001" / "history.json", json.dumps({"rounds": [ROW]}))
    write(folder / "checkpoint.json", json.dumps({"repetition": 1, "folder": "round-000001"}))
    run = FolderRun(folder)
    assert [r["metrics"] for r in run.snapshot().rounds] == [{"loss": 0.5}]
    damaged = [
        ('{"rounds": [], "rounds": %s}' % json.dumps([ROW, {**ROW, "repetition": 2}]), "the key 'rounds' twice"),
        (json.dumps({"rounds": [ROW, {**ROW, "repetition": 2}]}).replace("0.5", "NaN", 1), "holds NaN"),
    ]
    for n, (history, why) in enumerate(damaged, 2):
        write(folder / f"round-00000{n}" / "history.json", history)
        write(folder / "checkpoint.json", json.dumps({"repetition": n, "folder": f"round-00000{n}"}))
        view = run.snapshot()
        assert "cannot read the checkpoint" in view.note and why in view.note, view.note
        assert [r["metrics"] for r in view.rounds] == [{"loss": 0.5}] and view.repetition == 1
    write(folder / "checkpoint.json", '{"repetition": 1, "folder": "round-000009", "folder": "round-000001"}')
    assert "the key 'folder' twice" in run.snapshot().note
