"""The device's status page: self-contained HTML, checked with werkzeug and in a real browser."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from werkzeug.test import Client

import fedsync
from fedsync import FedArrays, Federated
from fedsync.device import DeviceApp
from tests.support.browser import Browser
from tests.support.seed_fedfloat import FedFloat


class _Cells(HTMLParser):
    """The text inside every element with an id, and the classes of the elements inside it."""

    def __init__(self):
        super().__init__()
        self.text: dict[str, str] = {}
        self.classes: dict[str, set[str]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        ids = [i for i in self._open if i is not None]
        for i in ids:
            self.classes[i] |= set((attrs.get("class") or "").split())
        if "id" in attrs:
            self.text.setdefault(attrs["id"], "")
            self.classes.setdefault(attrs["id"], set())
        if tag not in ("meta", "link", "br", "input", "img", "hr"):
            self._open.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if tag not in ("meta", "link", "br", "input", "img", "hr") and self._open:
            self._open.pop()

    def handle_data(self, data):
        for i in self._open:
            if i is not None:
                self.text[i] += data


def cells(html: str) -> _Cells:
    parser = _Cells()
    parser.feed(html)
    return parser



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
    page_cells = cells(text)
    assert page_cells.text["state"].strip() == "idle" and "idle" in page_cells.classes["state"]
    assert data.specs(2) in text
    assert {key: page_cells.text[key].strip() for key in ("repetition", "rounds_served", "samples")} == {
        "repetition": "1", "rounds_served": "1", "samples": "12",
    }
    assert not re.search(r"""(src|href)=["']?https?://""", text), "the page must not load external assets"


def test_status_page_escapes_what_it_shows():
    text = Client(DeviceApp(Sneaky(1.0))).get("/").text
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_named_bases_each_have_a_page_and_the_root_lists_them():
    client = Client(DeviceApp(fedsync.FedArrays([np.zeros(1)])))
    assert client.get("/").status_code == 200
    app = fedsync.device.app.DeviceApp({"model": FedArrays([np.zeros(1)]), "threshold": FedFloat(0.5)})
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
    # The script ran in the browser: it fetched /info and stamped the time it did.
    dom_cells = cells(dom)
    assert dom_cells.text["updated"].strip() not in ("", "when served")
    assert dom_cells.text["repetition"].strip() == "2" and dom_cells.text["samples"].strip() == "7"
    assert dom_cells.text["state"].strip() == "idle" and "idle" in dom_cells.classes["state"]


# -- a device with a token -------------------------------------------------------------

TOKEN = "s3cret-Token"
BROWSER_ACCEPT = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def token_device():
    return fedsync.device.app.DeviceApp({"model": FedArrays({"w": np.zeros(3, np.float32)}), "hidden_base": FedFloat(0.5)}, token=TOKEN)


def test_a_browser_without_the_token_gets_one_page_that_reveals_nothing():
    client = Client(token_device())
    paths = ["/", "/model/", "/hidden_base/", "/no_such_base/", "/model", "/model/info", "/info", "/hidden_base/1/result"]
    pages = [client.get(path, headers=BROWSER_ACCEPT) for path in paths]
    assert {page.status_code for page in pages} == {401}
    assert len({page.data for page in pages}) == 1, "the page must not depend on the path: it would tell which bases exist"
    text = pages[0].text
    assert pages[0].mimetype == "text/html" and 'type="password"' in text
    for secret in ("hidden_base", "model", "FedFloat", "FedArrays", "arrays:", "repetition\":", TOKEN):
        assert secret not in text
    assert not re.search(r"""(src|href)=["']?https?://""", text)
    # JSON clients, and anything but a page navigation, still get the same 401 JSON before routing.
    for path in ("/model/info", "/hidden_base/info", "/no_such/info", "/"):
        answer = client.get(path)
        assert (answer.status_code, answer.json["error"]) == (401, "unauthorized")
    assert client.post("/model/1/submit", headers=BROWSER_ACCEPT).json["error"] == "unauthorized"
    # With the token, the device's values as before.
    assert "FedArrays at /model" in client.get("/model/", headers={**BROWSER_ACCEPT, "Authorization": f"Bearer {TOKEN}"}).text


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium-headless-shell) - status page not checked in a browser",
)
@pytest.mark.slow  # ~0.9 s: keeps the fast tier under 90 s
def test_typing_the_token_into_the_page_in_headless_chromium(tmp_path):
    data = FedArrays({"w": np.zeros(3, np.float32)}, lambda model: 7)
    served = {"model": data, "hidden_base": FedFloat(0.5)}
    with fedsync.serve(served, port=0, block=False, token=TOKEN) as server, Browser(tmp_path / "profile") as browser:
        with Federated(data=FedArrays({"w": np.zeros(3, np.float32)}), remotes=[fedsync.Remote(server.url + "/model", token=TOKEN)]) as alg:
            alg.round()
            alg.round()
        page = server.url + "/model/"
        browser.open(page)
        entries = browser.evaluate("history.length")
        html = browser.evaluate("document.documentElement.outerHTML")
        assert "requires a token" in html
        for secret in ("hidden_base", "arrays:", "FedArrays", TOKEN):
            assert secret not in html, f"{secret!r} shown before the token"
        assert browser.evaluate("document.getElementById('device').hidden") is True

        browser.type("#token", "wrong-token")
        browser.press_enter()
        browser.wait_until("document.getElementById('message').textContent.includes('refused')")
        assert browser.evaluate("document.getElementById('device').hidden") is True

        browser.type("#token", TOKEN)
        browser.press_enter()
        browser.wait_until("!document.getElementById('device').hidden")
        assert browser.evaluate("document.getElementById('repetition').textContent") == "2"
        assert browser.evaluate("document.getElementById('samples').textContent") == "7"
        assert browser.evaluate("document.querySelector('#state span').textContent") == "idle"
        assert browser.evaluate("document.getElementById('unlock').hidden") is True
        # The token is in no URL: not the page's, not the history's, not any request's.
        assert browser.evaluate("location.href") == page
        assert browser.evaluate("history.length") == entries  # no form submission, no new URL
        urls = browser.evaluate("performance.getEntries().map(e => e.name)")
        assert urls and not [u for u in urls if TOKEN in u]

        # The root lists the bases once the token is known in this tab; a link keeps it.
        browser.open(server.url + "/")
        browser.wait_until("!document.getElementById('index').hidden")
        assert browser.evaluate("[...document.querySelectorAll('#bases a')].map(a => a.textContent)") == ["model", "hidden_base"]
        browser.evaluate("document.querySelector('#bases a').click()")
        browser.wait_until("location.pathname === '/model/' && !document.getElementById('device').hidden")
