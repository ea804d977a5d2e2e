"""The checks ``fedsync check`` runs, in order (docs/protocol.md is the reference for each).

A run submits one repetition (the device's last plus one) with a known payload built from the device's
own ``/info`` summary, so it changes the device the way one round would, and nothing else: every
malformed request is sent where the protocol says it changes nothing, and that is checked too.
"""

from __future__ import annotations

import re
from typing import Any

from ..wire.compression import WIRE_KEY
from ..wire.http import CONFIG_HEADER, REPETITION_HEADER, SPECS_HEADER, ErrorCode
from . import _check_payload as payloads
from ._check_probe import Answer, Checker

__all__ = ["run_all"]

TOO_BIG = 2**53 + 1
SPECS_FORMAT = re.compile(r"[A-Za-z0-9_.-]+:sha256:[0-9a-f]{16}")
STATES = ("idle", "training", "failed")
INFORMATIONAL: dict[str, tuple[str, Any]] = {
    "protocol": ("an integer", lambda v: type(v) is int),
    "fedsync": ("a string", lambda v: isinstance(v, str)),
    "type": ("a string", lambda v: isinstance(v, str)),
    "state": (f"one of {STATES}", lambda v: v in STATES),
    "rounds_served": ("an integer", lambda v: type(v) is int and v >= 0),
    "last_error": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "last_seconds": ("a number or null", lambda v: v is None or type(v) in (int, float)),
    "samples": ("an integer or null", lambda v: v is None or type(v) is int),
    "summary": ("an object or null", lambda v: v is None or isinstance(v, dict)),
}
BINARY = "application/octet-stream"


def _repetition(info: Any) -> int | None:
    value = info.get("repetition", 0) if isinstance(info, dict) else None
    return value if type(value) is int and 0 <= value <= 2**53 else None


def handshake(c: Checker, name: str = "handshake") -> dict[str, Any] | None:
    """``GET /info``: 200, a JSON object with specs (and the documented types); the object or None."""
    answer = c.request("GET", "/info")
    info = answer.json() if answer.status == 200 else None
    if not isinstance(info, dict):
        c.failed(name, f"GET /info: expected 200 and a JSON object, got {answer.shown()}", "info")
        return None
    if not answer.headers.get("content-type", "").startswith("application/json"):
        c.failed(name, f"GET /info answered Content-Type {answer.headers.get('content-type')!r}", "info")
        return None
    c.passed(name, f"GET /info answered a JSON object in {answer.seconds:.2f} s", "info")
    return info


def fields(c: Checker, info: dict[str, Any]) -> bool:
    """The handshake's required and informational fields, each of its documented type."""
    specs, problems = info.get("specs"), []
    if not isinstance(specs, str) or not 0 < len(specs) <= 4096:
        problems.append(f"specs must be a string of 1 to 4096 characters, got {str(specs)[:60]!r}")
    if _repetition(info) is None:
        problems.append(f"repetition must be an integer in [0, 2**53], got {str(info.get('repetition'))[:40]}")
    for key, (kind, ok) in INFORMATIONAL.items():
        if key in info and not ok(info[key]):
            problems.append(f"{key} must be {kind}, got {str(info[key])[:40]!r}")
    if problems:
        return c.failed("handshake fields", "; ".join(problems), "info")
    return c.passed("handshake fields", f"specs {specs!r}, repetition {info.get('repetition', 0)}", "info")


def specs_rule(c: Checker, info: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The specs' format, and for an array FedData the documented rule; the weights and wire_dtype."""
    specs = str(info.get("specs"))
    if not SPECS_FORMAT.fullmatch(specs):
        c.failed("specs format", f"{specs[:80]!r} is not <token>:sha256:<16 lowercase hex>", "specs")
    else:
        c.passed("specs format", specs, "specs")
    weights = payloads.weights_of(info.get("summary"))
    if isinstance(weights, str):
        if specs.startswith("arrays:"):
            c.failed("specs rule", f"specs of an array FedData, but {weights}", "info")
        else:
            c.skipped("specs rule", f"{weights}; only the array rule is checked", "rule")
        return None, None
    wire_dtype = payloads.wire_format_of(info)  # sent packed in a format the device lists, to check it decodes
    if not payloads.rule_of(specs, weights):
        c.failed(
            "specs rule", f"{specs!r} is not the rule's specs: {payloads.why_specs_differ(specs, weights)}", "rule"
        )
        return weights, None
    packed = f"; sending it {wire_dtype}, the first wire format its capabilities list" if wire_dtype else ""
    c.passed("specs rule", f"SHA-256 of the canonical JSON of the summary's {len(weights)} weights{packed}", "rule")
    return weights, wire_dtype


def tokens(c: Checker) -> None:
    """With ``--token``: no token, a wrong one, and an unknown route without one are each 401."""
    if not c.token:
        c.skipped("token", "no --token given: the device's authentication is not checked", "tokens")
        return
    c.expect_error("token missing", c.request("GET", "/info", auth=False), 401, ErrorCode.UNAUTHORIZED, "tokens",
                   "GET /info without Authorization")  # fmt: skip
    c.expect_error("token wrong", c.request("GET", "/info", auth=c.token + "x"), 401, ErrorCode.UNAUTHORIZED, "tokens",
                   "GET /info with another token")  # fmt: skip
    c.expect_error("token before routing", c.request("GET", "/fedsync-check/none", auth=False), 401,
                   ErrorCode.UNAUTHORIZED, "tokens", "an unknown route without the token")  # fmt: skip


def routing(c: Checker) -> None:
    """Unknown routes, wrong methods and too large repetitions, each a JSON error."""
    unknown = c.request("GET", "/fedsync-check/no-such-route")
    c.expect_error("unknown route", unknown, 404, ErrorCode.NOT_FOUND, "errors", "GET of an unknown route")
    wrong = c.request("PUT", "/info", body=b"")
    c.expect_error("wrong method", wrong, 405, ErrorCode.METHOD_NOT_ALLOWED, "errors", "PUT /info")
    c.expect_error("bad repetition", c.request("GET", f"/{TOO_BIG}/result"), 400, ErrorCode.BAD_REPETITION, "routes",
                   f"GET /{TOO_BIG}/result (above 2**53)")  # fmt: skip


def refusals(c: Checker, rep: int, specs: str, payload: bytes) -> None:
    """Malformed submissions of ``rep``, each refused with its code and changing nothing."""
    binary = {"Content-Type": BINARY}
    other = "arrays:sha256:" + ("0" * 16 if not specs.endswith("0" * 16) else "1" * 16)
    sent = [
        ("missing specs", {}, payload, 400, ErrorCode.MISSING_SPECS, "no X-Fedsync-Specs header"),
        ("wrong specs", {SPECS_HEADER: other}, payload, 409, ErrorCode.SPECS_MISMATCH, "another model's specs"),
        ("bad config", {SPECS_HEADER: specs, CONFIG_HEADER: "[1]"}, payload, 400, ErrorCode.BAD_CONFIG,
         "X-Fedsync-Config that is not a JSON object"),
        ("malformed payload", {SPECS_HEADER: specs}, b"\xff" * 16, 400, ErrorCode.MALFORMED_PAYLOAD,
         "16 bytes that are no safetensors payload"),
    ]  # fmt: skip
    for name, headers, body, status, code, why in sent:
        answer = c.request("POST", f"/{rep}/submit", body=body, headers={**binary, **headers})
        c.expect_error(name, answer, status, code, "submit", f"POST /{rep}/submit with {why}")
    answer = c.request("GET", f"/{rep + 1}/result?wait=not-a-number")
    c.expect_error("repetition before wait", answer, 404, ErrorCode.UNKNOWN_REPETITION, "result",
                   f"GET /{rep + 1}/result?wait=not-a-number on a device not working on it")  # fmt: skip
    unchanged(c, "refusals change nothing", rep - 1)


def unchanged(c: Checker, name: str, rep: int) -> None:
    """``/info`` still says repetition ``rep``."""
    answer = c.request("GET", "/info")
    now = _repetition(answer.json()) if answer.status == 200 else None
    if now != rep:
        c.failed(name, f"/info's repetition is {now}, expected {rep}: {answer.shown()}", "submit")
    else:
        c.passed(name, f"/info's repetition is still {rep}", "submit")


def submit(c: Checker, rep: int, specs: str, payload: bytes) -> bool:
    """The known payload for ``rep``: 202 with ``{"repetition": rep, "state": "training"}``."""
    answer = c.request("POST", f"/{rep}/submit", body=payload, headers={"Content-Type": BINARY, SPECS_HEADER: specs})
    body = answer.json()
    if answer.status != 202 or not isinstance(body, dict) or body.get("repetition") != rep:
        return c.failed("submit", f"POST /{rep}/submit: expected 202 {{\"repetition\": {rep}, ...}}, "
                        f"got {answer.shown()}", "submit")  # fmt: skip
    return c.passed("submit", f"POST /{rep}/submit of {len(payload)} bytes: 202", "submit")


def long_poll(c: Checker, rep: int) -> Answer | None:
    """``result?wait=`` until 200: no wait answers at once, a 202 only after its wait; the 200 or None."""
    first = c.request("GET", f"/{rep}/result")
    if first.status not in (200, 202) or (first.status == 202 and not isinstance(first.json(), dict)):
        c.failed("result without wait", f"GET /{rep}/result: expected 200, or 202 JSON, got {first.shown()}", "result")
        return None
    c.passed("result without wait", f"answered {first.status} at once ({first.seconds:.2f} s)", "result")
    answer, polls = first, 0
    while answer.status == 202 and polls < 1000 and c.left() > 1:
        wait = min(5.0, c.left() - 1)
        answer = c.request("GET", f"/{rep}/result?wait={wait:.3f}", wait=wait)
        polls += 1
        if answer.status == 202 and answer.seconds < wait - 0.5:
            c.failed("long-poll", f"a 202 after {answer.seconds:.2f} s of wait={wait:.3f}: the device must hold the "
                     "request until its result is ready or wait passes", "result")  # fmt: skip
            return None
    if answer.status == 500:
        c.failed("result", f"training failed on the device: {answer.shown()}", "result")
        return None
    if answer.status != 200:
        c.failed("result", f"no result within the deadline: {answer.shown()}", "result")
        return None
    c.passed("long-poll", f"200 after {polls} long-poll(s)", "result")
    return answer


def reply(c: Checker, rep: int, answer: Answer, weights: list[dict[str, Any]], wire_dtype: str | None) -> None:
    """The reply's headers, layout, sample count and metrics."""
    problems = []
    said = answer.headers.get(REPETITION_HEADER.lower())
    if said is not None and said != str(rep):
        problems.append(f"{REPETITION_HEADER}: {said[:40]!r}, expected {rep}")
    if answer.headers.get("content-type", "").split(";")[0].strip() != BINARY:
        problems.append(f"Content-Type {answer.headers.get('content-type')!r}, expected {BINARY}")
    if problems:
        c.failed("reply headers", "; ".join(problems), "result")
    else:
        c.passed("reply headers", f"{BINARY}, {REPETITION_HEADER} {said or '(absent)'}", "result")
    found, report = payloads.read_reply(answer.body, weights, wire_dtype)
    if found:
        packing = any(problem.startswith(WIRE_KEY) for problem in found)  # only a fedsync.wire problem is about packing
        c.failed("reply payload", "; ".join(found), "compressed" if packing else "payloads")
        return
    assert report is not None
    metrics = ", ".join(f"{k}={v:g}" for k, v in list(report["metrics"].items())[:4]) or "none"
    c.passed("reply payload", f"{len(answer.body)} bytes, {report['samples']} samples, metrics {metrics}", "payloads")


def after_result(c: Checker, rep: int, specs: str, payload: bytes, first: bytes) -> None:
    """Once ready: fractional wait, HEAD, bad waits, a stale submission, the repetition kept."""
    again = c.request("GET", f"/{rep}/result?wait=0.250")
    if again.status != 200 or again.body != first:
        c.failed("fractional wait", f"GET /{rep}/result?wait=0.250: expected 200 and the same bytes, got "
                 f"{again.shown() if again.status != 200 else 'other bytes'}", "snapshots")  # fmt: skip
    else:
        c.passed("fractional wait", "wait=0.250 answered the same reply", "result")
    head = c.request("HEAD", f"/{rep}/result?wait=0")
    if head.status != 200 or head.body:
        c.failed("result HEAD", f"HEAD /{rep}/result: expected 200 without a body, got {head.shown()}", "result")
    else:
        c.passed("result HEAD", "200 without a body", "result")
    for raw in ("not-a-number", "-1"):
        bad = c.request("GET", f"/{rep}/result?wait={raw}")
        c.expect_error(f"bad wait {raw}", bad, 400, ErrorCode.BAD_WAIT, "result", f"GET /{rep}/result?wait={raw}")
    answer = c.request("POST", f"/{rep}/submit", body=payload, headers={"Content-Type": BINARY, SPECS_HEADER: specs})
    c.expect_error("stale repetition", answer, 409, ErrorCode.STALE_REPETITION, "submit", f"POST /{rep}/submit again")
    unchanged(c, "repetition kept", rep)


def evaluate(c: Checker, rep: int, specs: str, payload: bytes) -> None:
    """``POST {rep}/evaluate``: 200 with samples and metrics, or 501 not_supported (SKIP)."""
    answer = c.request("POST", f"/{rep}/evaluate", body=payload, headers={"Content-Type": BINARY, SPECS_HEADER: specs})
    body = answer.json()
    if answer.status == 501 and isinstance(body, dict) and body.get("error") == ErrorCode.NOT_SUPPORTED:
        c.skipped("evaluate", "not supported (501 not_supported)", "evaluate")
        return
    samples = body.get("samples") if isinstance(body, dict) else None
    metrics = body.get("metrics") if isinstance(body, dict) else None
    if answer.status != 200 or type(samples) is not int or not 0 <= samples <= 2**53 or not isinstance(metrics, dict):
        c.failed("evaluate", f"expected 200 {{\"samples\": <integer>, \"metrics\": {{...}}}} or 501 not_supported, "
                 f"got {answer.shown()}", "evaluate")  # fmt: skip
    elif not all(type(v) in (int, float) for v in metrics.values()):
        c.failed("evaluate", f"metrics must be numbers: {answer.shown()}", "evaluate")
    else:
        c.passed("evaluate", f"{samples} samples, metrics {sorted(metrics)[:4]}", "evaluate")
    unchanged(c, "evaluate keeps the repetition", rep)


def run_all(c: Checker) -> None:
    """Every check, in order; a failed handshake ends the run (nothing else can be checked)."""
    info = handshake(c)
    if info is None or not fields(c, info):
        return
    weights, wire_dtype = specs_rule(c, info)
    tokens(c)
    routing(c)
    rep = (_repetition(info) or 0) + 1
    specs = str(info["specs"])
    if weights is None:
        for name in ("submit", "long-poll", "reply payload", "evaluate"):
            c.skipped(name, "no array summary to build a known payload from", "rule")
        return
    try:
        payload = payloads.known_payload(weights, specs, wire_dtype)
    except (ValueError, TypeError) as exc:
        c.failed("submit", f"cannot build a payload from the summary: {exc}", "payloads")
        return
    refusals(c, rep, specs, payload)
    if not submit(c, rep, specs, payload):
        return
    answer = long_poll(c, rep)
    if answer is None:
        return
    reply(c, rep, answer, weights, wire_dtype)
    after_result(c, rep, specs, payload, answer.body)
    evaluate(c, rep, specs, payload)
