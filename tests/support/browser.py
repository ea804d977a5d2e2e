"""Drive headless Chromium from a test: the DevTools protocol over a pipe, with the standard library only.

``--remote-debugging-pipe`` makes Chromium read DevTools commands from file
descriptor 3 and write answers to 4, as NUL-terminated JSON: no websocket
client and no browser download (Playwright, Selenium) needed. A test loads a
page, types into it as a person would (``Input.insertText``), presses keys,
and reads the page back.

``chromium(url, ...)`` is the simpler way, one command per page load (``--dump-dom``, ``--screenshot``);
``needs_browser`` skips a test where no Chromium is installed, except in CI.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-headless-shell") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium-headless-shell) - dashboard not checked in a browser",
)


def _above_four(fd: int) -> int:
    """``fd`` duplicated to a descriptor number of at least 10; ``fd`` itself is closed."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class BrowserError(RuntimeError):
    """Chromium did not answer in time, or answered a command with an error."""


class Browser:
    """One headless Chromium with one page; a context manager that ends the browser."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed: apt-get install chromium-headless-shell")
        self.timeout = timeout
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # The child's ends above 4, so that moving them onto 3 and 4 clobbers neither.
        to_browser_read, from_browser_write = (_above_four(fd) for fd in (to_browser_read, from_browser_write))
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-pipe",
        ]  # fmt: skip

        # bash moves the pipe ends onto the protocol's descriptors 3 and 4, then becomes chromium.
        wire = f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write} {to_browser_read}<&- {from_browser_write}>&-'
        self.process = subprocess.Popen(
            ["bash", "-c", wire, CHROMIUM, *flags, "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(to_browser_read, from_browser_write),
        )  # fmt: skip
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (events that arrive meanwhile are kept in ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"chromium did not answer within {self.timeout:g}s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium closed the pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def open(self, url: str) -> None:
        """Navigate the page to ``url`` and wait until it has loaded."""
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        self.wait_until("document.readyState === 'complete' && location.href !== 'about:blank'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float | None = None) -> None:
        """Poll a JavaScript condition until it is true (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:  # while a new page loads, its elements may not exist yet: keep polling
                if self.evaluate(f"Boolean({expression})"):
                    return
                why = "still false"
            except BrowserError as exc:
                why = f"still raising ({str(exc)[:300]})"
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} {why} after {timeout or self.timeout:g}s")
            time.sleep(0.1)

    def type(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` into it, as a keyboard would insert it."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", session=True, text=text)

    def press_enter(self) -> None:
        """Press and release Enter in the focused element (submits its form)."""
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent", session=True, type=kind, key="Enter", code="Enter",
                windowsVirtualKeyCode=13, text="\r" if kind == "keyDown" else "",
            )  # fmt: skip

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chromium(url: str, tmp_path: Path, *extra: str) -> str:
    """Chromium's output for one page load, run as a command (``--dump-dom``, ``--screenshot=FILE``): no DevTools."""
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--window-size=1100,1400",
    ]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *extra, url], capture_output=True, text=True, timeout=180).stdout
