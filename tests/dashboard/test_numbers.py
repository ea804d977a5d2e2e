"""Every number the dashboard reads from a saved run is checked, and every answer stays valid JSON:
sums and products of large saved values (two rounds of 1e308 seconds, an ETA over a huge plan)
must never make an endpoint answer 500."""

import json
from pathlib import Path

import pytest
import requests

from fedsync.dashboard.app import serve_dashboard


def folder(tmp_path: Path, rows, run=None) -> Path:
    where = tmp_path / "run"
    (where / "round-000002").mkdir(parents=True)
    (where / "round-000002" / "history.json").write_text(json.dumps({"rounds": rows}))
    (where / "checkpoint.json").write_text(json.dumps({"repetition": 2, "folder": "round-000002"}))
    if run is not None:
        (where / "run.json").write_text(json.dumps(run))
    return where


HUGE = [
    ([{"repetition": 1, "seconds": 1e308}, {"repetition": 2, "seconds": 1e308}], None),
    ([{"repetition": 1, "seconds": 1.0, "evaluation": {"seconds": 1.7e308}}, {"repetition": 2, "seconds": 1.7e308}], None),
    ([{"repetition": 1, "seconds": 1e300}, {"repetition": 2, "seconds": 1e300}], {"rounds": 2**53, "started": -1e308}),
    ([{"repetition": 1, "seconds": 5.0, "devices": {"http://a:1": {"samples": 3}}, "answered": ["http://a:1"]},
      {"repetition": 2, "seconds": 1e308, "answered": ["http://a:1"]}], {"rounds": 9007199254740992}),
]  # fmt: skip


@pytest.mark.parametrize("rows, run", HUGE)
def test_huge_saved_numbers_never_make_an_endpoint_fail(rows, run, tmp_path):
    with serve_dashboard(folder(tmp_path, rows, run)) as dashboard:
        for path in ("/api/run", "/api/history", "/api/devices"):
            answer = requests.get(dashboard.url + path, timeout=30)
            assert answer.status_code == 200, (path, answer.text)
            json.loads(answer.text, parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))
        view = requests.get(dashboard.url + "/api/run", timeout=30).json()
    assert view["rounds_done"] == 2
    for key in ("elapsed_seconds", "seconds_per_round", "eta_seconds"):
        assert view[key] is None or 0 <= view[key] < 1e300, (key, view[key])


def test_seconds_beyond_any_real_run_show_as_unknown(tmp_path):
    rows = [{"repetition": 1, "seconds": 2.0}, {"repetition": 2, "seconds": 1e308}]
    with serve_dashboard(folder(tmp_path, rows)) as dashboard:
        history = requests.get(dashboard.url + "/api/history", timeout=30).json()
    assert [r["seconds"] for r in history["rounds"]] == [2.0, None]
