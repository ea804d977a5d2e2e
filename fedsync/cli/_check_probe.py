"""What ``fedsync check`` sends and records: requests to one device within a deadline, and outcomes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "Checker", "DOC", "Outcome", "SECTIONS"]

DOC = "docs/protocol.md"
SECTIONS = {
    "info": "get-baseinfo",
    "specs": "specs",
    "rule": "the-rule-for-array-models",
    "submit": "post-baserepsubmit",
    "result": "get-baserepresultwaits",
    "evaluate": "post-baserepevaluate",
    "errors": "errors",
    "codes": "error-codes",
    "tokens": "tokens",
    "routes": "routes",
    "connections": "connections",
    "payloads": "array-payloads",
    "compressed": "compressed-payloads",
    "snapshots": "replies-are-snapshots",
    "config": "round-configuration",
}
"""Each docs/protocol.md section a check refers to, by its heading's anchor (a test keeps them existing)."""


@dataclass
class Outcome:
    """One check's result: ``verdict`` is ``PASS``, ``FAIL`` or ``SKIP``; ``section`` a key of SECTIONS."""

    name: str
    verdict: str
    detail: str
    section: str

    def line(self) -> str:
        """The line printed for this check."""
        where = f"  [{DOC}#{SECTIONS[self.section]}]" if self.verdict == "FAIL" else ""
        return f"{self.verdict}  {self.name}: {self.detail}{where}"


@dataclass
class Answer:
    """What a device answered: status, headers (lower-case names), body; ``failure`` when nothing came."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    failure: str | None = None

    def json(self) -> Any:
        """The body as strict JSON, or ``None`` when it is not."""
        from .._util.json import loads_strict

        def refuse(what: str) -> ValueError:
            return ValueError(what)

        try:
            return loads_strict(self.body.decode("utf-8"), duplicate=refuse, constant=refuse)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None

    def shown(self) -> str:
        """The answer in a few words, for a failure's message."""
        if self.failure is not None:
            return self.failure
        text = self.body[:160].decode("utf-8", "replace").replace("\n", " ")
        return f"HTTP {self.status} {self.headers.get('content-type', '(no Content-Type)')} {text!r}"


class Checker:
    """Requests to one device within a deadline, and the outcomes recorded so far.

    Args:
        url: the device's base URL (``http(s)://host:port[/base]``).
        token: the device's token, sent as ``Authorization: Bearer``; ``None`` for none.
        verify: ``requests``' ``verify``: ``True``, or a CA bundle's path for https.
        timeout: seconds any one request may take (long-polls: their wait plus this).
        deadline: seconds the whole run may take.
    """

    def __init__(
        self, url: str, *, token: str | None = None, verify: bool | str = True, timeout: float = 10.0,
        deadline: float = 120.0,
    ) -> None:  # fmt: skip
        import requests

        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ends = time.monotonic() + deadline
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False
        self.outcomes: list[Outcome] = []
        self.report: Callable[[Outcome], None] = lambda outcome: None

    def left(self) -> float:
        """Seconds left in the run (0 when the deadline passed)."""
        return max(0.0, self.ends - time.monotonic())

    def request(
        self, method: str, target: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
        auth: bool | str = True, wait: float = 0.0,
    ) -> Answer:  # fmt: skip
        """One request; ``auth``: True sends the token, False none, a string that string as the token."""
        import requests

        sent = dict(headers or {})
        token = self.token if auth is True else (auth or None)
        if token:
            sent["Authorization"] = f"Bearer {token}"
        if self.left() <= 0:
            return Answer(failure="the check's deadline passed before this request")
        timeout = min(self.left(), self.timeout + wait)
        started = time.monotonic()
        try:
            with self.session.request(
                method, self.url + target, data=body, headers=sent, timeout=timeout, stream=True,
                allow_redirects=False,
            ) as response:  # fmt: skip
                content = b""
                for piece in response.iter_content(65536):
                    content += piece
                    if len(content) > 512 * 1024 * 1024 or time.monotonic() - started > timeout:
                        return Answer(failure="an answer over 512 MiB, or slower than the request's timeout")
                headers_ = {k.lower(): v for k, v in response.headers.items()}
                return Answer(response.status_code, headers_, content, time.monotonic() - started)
        except requests.RequestException as exc:
            return Answer(
                failure=f"no answer: {type(exc).__name__}: {str(exc)[:200]}", seconds=time.monotonic() - started
            )

    def record(self, name: str, verdict: str, detail: str, section: str) -> bool:
        """Record one check; ``True`` when it passed (or was skipped)."""
        outcome = Outcome(name, verdict, detail, section)
        self.outcomes.append(outcome)
        self.report(outcome)
        return verdict != "FAIL"

    def passed(self, name: str, detail: str, section: str) -> bool:
        """Record a PASS."""
        return self.record(name, "PASS", detail, section)

    def failed(self, name: str, detail: str, section: str) -> bool:
        """Record a FAIL (always returns False)."""
        self.record(name, "FAIL", detail, section)
        return False

    def skipped(self, name: str, detail: str, section: str) -> bool:
        """Record a SKIP."""
        return self.record(name, "SKIP", detail, section)

    def expect_error(self, name: str, answer: Answer, status: int, code: str, section: str, why: str) -> bool:
        """A check that ``answer`` is ``status`` with the JSON error ``code`` (docs/protocol.md, "Errors")."""
        if answer.failure is not None or answer.status != status:
            return self.failed(name, f"{why}: expected {status} {code}, got {answer.shown()}", section)
        if not answer.headers.get("content-type", "").startswith("application/json"):
            return self.failed(name, f"{why}: a {status} whose body is not JSON: {answer.shown()}", "errors")
        body = answer.json()
        if not isinstance(body, dict) or not isinstance(body.get("message"), str):
            return self.failed(
                name, f'{why}: the error body is not {{"error": ..., "message": ...}}: {answer.shown()}', "errors"
            )
        if body.get("error") != code:
            return self.failed(name, f"{why}: expected error {code!r}, got {body.get('error')!r}", "codes")
        return self.passed(name, f"{why}: {status} {code}", section)

    def close(self) -> None:
        """Close the connections."""
        self.session.close()
