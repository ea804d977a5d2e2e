"""The dashboard's page in headless Chromium: its Content-Security-Policy runs only the page's own
scripts (by hash), a constant metric's axis has a readable range, durations start at zero, the
server series is explained, and a device's connection failure reads as one line (#22)."""

import json

import pytest
import requests

from fedsync.dashboard.app import serve_dashboard
from tests.support.browser import Browser, needs_browser

URLLIB3 = (
    "RemoteUnavailable: cannot connect: is the device running? (HTTPConnectionPool(host='10.0.0.9', port=9): "
    "Max retries exceeded with url: /info (Caused by NewConnectionError(\"HTTPConnection(host='10.0.0.9', port=9): "
    'Failed to establish a new connection: [Errno 111] Connection refused")))\n'
    "Traceback (most recent call last):\n  File x\n  File y\n  File z\nOSError: refused"
)


def run_folder(tmp_path):
    folder = tmp_path / "run"
    rows = [
        {"repetition": n, "seconds": seconds, "answered": ["http://10.0.0.1:8000"], "metrics": {"loss": 1.0 / n},
         "failures": {"http://10.0.0.9:9": URLLIB3},
         "evaluation": {"repetition": n, "metrics": {"accuracy": 0.75}, "seconds": 0.5, "failures": {}},
         "server_evaluation": {"repetition": n, "metrics": {"accuracy": 0.8}}}
        for n, seconds in ((1, 1.01), (2, 1.02), (3, 1.015))
    ]  # fmt: skip
    (folder / "round-000003").mkdir(parents=True)
    (folder / "round-000003" / "history.json").write_text(json.dumps({"rounds": rows}))
    (folder / "checkpoint.json").write_text(json.dumps({"repetition": 3, "folder": "round-000003"}))
    return folder


def test_the_policy_names_the_pages_scripts_by_hash_and_allows_no_other(tmp_path):
    with serve_dashboard(tmp_path) as dashboard:
        policy = requests.get(dashboard.url + "/", timeout=30).headers["Content-Security-Policy"]
        api = requests.get(dashboard.url + "/api/run", timeout=30).headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and policy == api
    assert policy.count("'sha256-") == 4  # two scripts (uPlot, the page) and two styles


@needs_browser
def test_the_page_in_chromium(tmp_path):
    with serve_dashboard(run_folder(tmp_path)) as dashboard, Browser(tmp_path / "profile") as browser:
        browser.open(dashboard.url + "/")
        browser.wait_until("document.querySelectorAll('.chart canvas').length >= 3")  # the page's scripts ran
        browser.wait_until("document.querySelector('#devices tbody tr[data-url=\"http://10.0.0.9:9\"]')")
        # An inline script without the page's hash does not run (it did under 'unsafe-inline').
        injected = browser.evaluate(
            "(() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
            " document.body.appendChild(s); return window.injected === 1; })()"
        )
        assert injected is False
        accuracy = browser.evaluate("(() => { const y = charts.get('accuracy').plot.scales.y; return [y.min, y.max]; })()")
        seconds = browser.evaluate("charts.get('round seconds').plot.scales.y.min")
        ticks = browser.evaluate("charts.get('accuracy').plot.axes[1]._splits.length")
        key = browser.evaluate("document.querySelector('#series-key .key.server').parentNode.textContent")
        labels = browser.evaluate("Array.from(document.querySelectorAll('.chart[data-metric=accuracy] .u-legend .u-label')).map(e => e.textContent)")
        cell = browser.evaluate("(() => { const c = document.querySelector('tr[data-url=\"http://10.0.0.9:9\"] td.last_failure'); return [c.textContent, c.title]; })()")
    assert accuracy[0] < 0.75 < 0.8 < accuracy[1] and ticks >= 3, (accuracy, ticks)
    assert seconds == 0
    assert "server" in labels and "evaluate_fn" in key
    text, title = cell
    assert text == "round 3: RemoteUnavailable: cannot connect: is the device running? (Connection refused)"
    assert title == URLLIB3
