"""The device's status page: self-contained HTML, checked with werkzeug and in a real browser."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from werkzeug.test import Client

import fedsync
from fedsync import FedArrays, Federated
from tests.seed_fedfloat import FedFloat


class Sneaky(FedFloat):
    def specs(self, repetition):
        return "<script>alert(1)</script>"


def test_status_page_shows_the_device_state():
    data = FedArrays({"w": np.zeros(3, np.float32)}, lambda model: 12)
    with fedsync.serve(data, port=0, block=False) as server:
        with Federated(data=FedArrays({"w": np.zeros(3, np.float32)}), remotes=[server.url]) as alg:
            alg.round()
        client = Client(server.app)
        page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.text
    assert '<td id="state"><span class="state idle">idle</span></td>' in text
    assert f"<code>{data.specs(2)}</code>" in text
    assert '<td id="repetition">1</td>' in text
    assert '<td id="rounds_served">1</td>' in text
    assert '<td id="samples">12</td>' in text
    assert not re.search(r"""(src|href)=["']?https?://""", text), "the page must not load external assets"


def test_status_page_escapes_what_it_shows():
    text = Client(Sneaky(1.0).app()).get("/").text
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_named_bases_each_have_a_page_and_the_root_lists_them():
    client = Client(fedsync.FedArrays([np.zeros(1)]).app())
    assert client.get("/").status_code == 200
    app = fedsync.server.DeviceApp({"model": FedArrays([np.zeros(1)]), "threshold": FedFloat(0.5)})
    client = Client(app)
    root = client.get("/").text
    assert 'href="model/"' in root and 'href="threshold/"' in root
    assert "FedFloat at /threshold" in client.get("/threshold/").text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-headless-shell") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium-headless-shell) - status page not checked in a browser",
)
def test_status_page_in_headless_chromium(tmp_path):
    data = FedArrays({"w": np.zeros(3, np.float32)}, lambda model: 7)
    with fedsync.serve(data, port=0, block=False) as server:
        with Federated(data=FedArrays({"w": np.zeros(3, np.float32)}), remotes=[server.url]) as alg:
            alg.round()
            alg.round()
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
        ]
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", server.url + "/"], capture_output=True, text=True, timeout=120).stdout
        subprocess.run([CHROMIUM, *flags, f"--screenshot={tmp_path / 'status.png'}", "--window-size=900,600", server.url + "/"], capture_output=True, timeout=120)
    # The script ran in the browser: it fetched /info and stamped the time it did.
    assert '<span id="updated">when served</span>' not in dom
    assert re.search(r'<td id="repetition">2</td>', dom)
    assert re.search(r'<td id="samples">7</td>', dom)
    assert re.search(r'<span class="state idle">idle</span>', dom)
    assert (tmp_path / "status.png").stat().st_size > 1000
