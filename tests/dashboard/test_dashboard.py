"""The coordinator's dashboard: its JSON during and after real runs, from a live run or a
checkpoint folder, malformed files, and the page in a real browser."""

import json
import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from fedsync import FedArrays, Federated, Remote
from fedsync.dashboard.app import FolderRun, serve_dashboard
from tests.support.browser import CHROMIUM, chromium, needs_browser

ROOT = Path(__file__).resolve().parents[2]
def weights():
    """The coordinator's side of tests/support/devices/basic.py's ``constant`` and ``evaluating``."""
    return FedArrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)})


def linreg_weights():
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


def get(url, path):
    response = requests.get(url + path, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def dead_device():
    """A device URL where nothing listens: every round reports it failed."""
    return Remote("http://127.0.0.1:9", retries=0, timeout=5)


@pytest.mark.slow  # ~0.9 s: keeps the fast tier under 90 s
def test_live_run_endpoints_during_and_after_the_run(devices):
    a, b = devices("constant", 1.0, 40), devices("evaluating", 2.0, 5, 10, 0.75)
    seen = {}

    def watch(alg, result):  # runs inside fit: the run is live, with rounds to go
        if result.repetition == 2:
            seen.update(run=get(alg.dashboard.url, "/api/run"), devices=get(alg.dashboard.url, "/api/devices"))

    with Federated(weights(), [a.url, b.url, dead_device()], min_results=2, dashboard=0) as alg:
        url = alg.dashboard.url
        assert url.startswith("http://127.0.0.1:")
        alg.fit(3, evaluate_every=2, callbacks=[watch], progress=False)
        run, history, devs = get(url, "/api/run"), get(url, "/api/history"), get(url, "/api/devices")
    with pytest.raises(requests.ConnectionError):  # close() closed the dashboard too
        requests.get(url + "/api/run", timeout=5)

    assert seen["run"]["rounds_done"] == 2 and seen["run"]["rounds_planned"] == 3 and seen["run"]["rounds_to_go"] == 1
    assert not seen["run"]["finished"] and seen["run"]["eta_seconds"] >= 0
    assert {d["url"]: d["answered"] for d in seen["devices"]["devices"]} == {a.url: 2, b.url: 2, "http://127.0.0.1:9": 0}

    assert run["rounds_done"] == 3 and run["rounds_to_go"] == 0 and run["finished"] and run["repetition"] == 3
    assert run["config"]["min_results"] == 2 and run["config"]["strategy"]["name"] == "FedAvg"
    assert [r["metrics"]["loss"] for r in history["rounds"]] == alg.history.metric("loss")
    assert history["metrics"] == {"training": ["loss"], "evaluation": ["accuracy", "mean_w"]}
    assert [r["evaluation"] and r["evaluation"]["accuracy"] for r in history["rounds"]] == [None, 0.75, None]

    rows = {d["url"]: d for d in devs["devices"]}
    assert rows[a.url]["sampled"] == rows[a.url]["answered"] == 3 and rows[a.url]["samples"] == 40
    assert rows[b.url]["samples"] == 5 and rows[b.url]["state"] == "answered" and rows[b.url]["last_failure"] is None
    assert rows[a.url]["last_failure"]["during"] == "evaluation"  # it declares no evaluate callback
    dead = rows["http://127.0.0.1:9"]
    assert dead["sampled"] == 3 and dead["answered"] == 0 and dead["state"] == "failed"
    assert dead["last_failure"]["round"] == 3 and dead["last_failure"]["reason"].startswith("RemoteUnavailable")


def test_folder_dashboard_follows_a_checkpoint_as_it_is_written(devices, tmp_path):
    device = devices("constant", 1.0, 10)
    folder = tmp_path / "run"
    with serve_dashboard(folder) as dashboard:
        assert "no checkpoint" in get(dashboard.url, "/api/run")["note"]
        with Federated(weights(), [device.url], checkpoint=folder, fraction=1.0, timeout=60) as alg:
            alg.fit(2, progress=False)
        run = get(dashboard.url, "/api/run")
        assert (run["rounds_done"], run["rounds_planned"], run["repetition"], run["note"]) == (2, 2, 2, None)
        assert run["config"]["timeout"] == 60 and run["config"]["devices"] == 1
        with Federated(weights(), [device.url], checkpoint=folder) as alg:  # resumed: a longer plan
            alg.fit(4, progress=False)
        run, history = get(dashboard.url, "/api/run"), get(dashboard.url, "/api/history")
        devs = get(dashboard.url, "/api/devices")["devices"]
    assert (run["rounds_done"], run["rounds_planned"], run["finished"]) == (4, 4, True)
    assert [r["metrics"]["loss"] for r in history["rounds"]] == [1.0] * 4
    assert [(d["url"], d["sampled"], d["answered"], d["samples"]) for d in devs] == [(device.url, 4, 4, 10)]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


def hostile_folder(folder):
    """A checkpoint written by someone else: odd types, markup in reasons, a token in a URL."""
    rounds = [
        {"repetition": 1, "answered": ["http://u:secret@10.0.0.1:8000"], "failures": {"http://10.0.0.2:8000": HOSTILE + " via http://u:secret@proxy:3128"},
         "metrics": {"loss": 0.5, "bad": "NaN", "worse": [1]}, "devices": {"http://u:secret@10.0.0.1:8000": {"samples": 3}},
         "seconds": 1.5, "evaluation": "nonsense"},
        "not a round",
        {"repetition": "two", "answered": "everyone", "failures": [], "metrics": {"loss": 0.25}, "seconds": -1},
    ]  # fmt: skip
    write(folder / "round-000002" / "history.json", json.dumps({"rounds": rounds}))
    write(folder / "checkpoint.json", json.dumps({"repetition": 2, "folder": "round-000002"}))
    write(folder / "run.json", json.dumps({"rounds": "many", "config": {"timeout": 5, "token": "Bearer abc", "x": {"y": [1]}}}))


def test_malformed_checkpoint_files_show_what_is_known(tmp_path):
    folder = tmp_path / "run"
    hostile_folder(folder)
    with serve_dashboard(folder) as dashboard:
        run, history = get(dashboard.url, "/api/run"), get(dashboard.url, "/api/history")
        devs = get(dashboard.url, "/api/devices")["devices"]
        assert run["rounds_done"] == 2 and run["rounds_planned"] is None and run["config"]["timeout"] == 5
        assert "abc" not in json.dumps(run) and "secret" not in json.dumps(devs)
        assert [r["metrics"] for r in history["rounds"]] == [{"loss": 0.5}, {"loss": 0.25}]
        assert {d["url"]: d["answered"] for d in devs} == {"http://10.0.0.1:8000": 1, "http://10.0.0.2:8000": 0}
        for damaged in ["{not json", "[1, 2]", '{"folder": "../../etc"}', '{"folder": "round-000009"}']:
            write(folder / "checkpoint.json", damaged)
            run = get(dashboard.url, "/api/run")
            assert run["rounds_done"] == 2 and "cannot read the checkpoint" in run["note"]
        assert requests.get(dashboard.url + "/api/run", headers={"Host": "attacker.example"}, timeout=10).status_code == 421
    assert FolderRun(tmp_path / "missing").snapshot().rounds == []


def test_the_page_is_self_contained_and_builds_no_markup_from_data(tmp_path):
    with serve_dashboard(tmp_path) as dashboard:
        page = requests.get(dashboard.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["Content-Security-Policy"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the page must not load external assets"
    assert "uPlot v1.6.32" in page.text or "uPlot (v1.6.32)" in page.text
    script = (ROOT / "fedsync" / "dashboard" / "static" / "dashboard.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


def test_fedsync_dashboard_command_serves_a_folder(devices, tmp_path):
    device = devices("constant", 2.0, 4)
    with Federated(weights(), [device.url], checkpoint=tmp_path / "run") as alg:
        alg.fit(1, progress=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsync", "dashboard", str(tmp_path / "run"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("dashboard http://127.0.0.1:"), line
        run = get(line.split()[1].rstrip("/"), "/api/run")
        assert run["source"] == "folder" and run["rounds_done"] == 1 and run["rounds_planned"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0


def cell(dom, url, name):
    row = re.search(r'<tr data-url="%s">(.*?)</tr>' % re.escape(url), dom, re.S)
    assert row, f"no row for {url} in the page"
    return re.search(r'<td class="[^"]*\b%s\b[^"]*"[^>]*>(.*?)</td>' % name, row.group(1), re.S).group(1)


@needs_browser
@pytest.mark.slow  # over a second: the full suite (the fast tier stays under 90 s)
def test_dashboard_in_headless_chromium_during_a_live_run(devices, tmp_path):
    assert CHROMIUM, "chromium is not installed: apt-get install chromium-headless-shell"
    a, b = devices("linreg", 3, 30), devices("linreg", 4, 50)
    pages = {}

    def look(alg, result):  # the page is loaded while the run goes on: round 2 of 4
        if result.repetition == 2:
            pages["dom"] = chromium(alg.dashboard.url + "/", tmp_path, "--dump-dom")
            chromium(alg.dashboard.url + "/", tmp_path, f"--screenshot={tmp_path / 'dashboard.png'}")

    with Federated(linreg_weights(), [a.url, b.url, dead_device()], min_results=2, dashboard=0) as alg:
        alg.fit(4, callbacks=[look], progress=False)
    dom = pages["dom"]
    # The script ran: it fetched the JSON and filled the run, the chart and the table.
    assert re.search(r'<dd id="rounds_done">2 of 4</dd>', dom)
    assert re.search(r'<dd id="rounds_to_go">2</dd>', dom)
    assert re.search(r'<div class="chart" data-metric="mse" data-points="training:2">.*?<canvas', dom, re.S)
    assert (cell(dom, a.url, "answered"), cell(dom, a.url, "samples"), cell(dom, b.url, "samples")) == ("2", "30", "50")
    assert cell(dom, "http://127.0.0.1:9", "sampled") == "2" and cell(dom, "http://127.0.0.1:9", "answered") == "0"
    assert "round 2: RemoteUnavailable" in cell(dom, "http://127.0.0.1:9", "last_failure")
    assert (tmp_path / "dashboard.png").stat().st_size > 5000


@needs_browser
def test_dashboard_in_headless_chromium_escapes_what_it_shows(tmp_path):
    assert CHROMIUM, "chromium is not installed: apt-get install chromium-headless-shell"
    hostile_folder(tmp_path / "run")
    with serve_dashboard(tmp_path / "run") as dashboard:
        dom = chromium(dashboard.url + "/", tmp_path, "--dump-dom")
    assert "&lt;img src=x onerror=\"document.title='pwned'\"&gt;" in cell(dom, "http://10.0.0.2:8000", "last_failure")
    assert "<img" not in dom and "secret" not in dom and "pwned</title>" not in dom
    assert re.search(r'data-metric="loss" data-points="training:2"', dom)


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_the_docs_snippet_runs_and_prints_what_the_docs_say(tmp_path):
    text = (ROOT / "docs" / "dashboard.md").read_text()
    code = re.search(r"```python\n(import json.*?)```", text, re.S).group(1)
    expected = re.search(r"prints .*?\n\n```\n(.*?)```", text, re.S).group(1).splitlines()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected  # the stderr line is named in the sentence before the block
    assert re.fullmatch(r"fedsync dashboard: http://127\.0\.0\.1:\d+/", done.stderr.strip())
    assert sorted(p.name for p in (tmp_path / "runs" / "exp1").iterdir()) == ["checkpoint.json", "round-000003", "run.json"]
