"""docs/protocol.md is the contract: the wire vocabulary in fedsync.wire.http and the document name the same things.

A code added on one side only fails here: raised as a string literal (not an ErrorCode), or put in the
enum without a row in the document's table of codes, or documented without existing.
"""

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

from fedsync.wire import http
from fedsync.wire.http import ROUTES, ApiError, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"


def documented_table() -> dict[str, int]:
    """The codes of protocol.md's "Error codes" table, each with its status."""
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text.split("### Error codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, re.M)
    assert rows, "docs/protocol.md has no table of error codes under '### Error codes'"
    codes = [code for code, _ in rows]
    assert len(codes) == len(set(codes)), "a code is listed twice in docs/protocol.md's table"
    return {code: int(status) for code, status in rows}


def documented_anywhere() -> set[str]:
    """Every code the document's prose and tables give with a status: `409 busy`, 400 `secagg_malformed`, | 409 | `busy` |."""
    text = PROTOCOL.read_text(encoding="utf-8")
    found = set(re.findall(r"\b[45]\d\d`? `([a-z][a-z_]+)`", text))  # 400 `code` and `400` `code`
    found |= set(re.findall(r"`[45]\d\d ([a-z][a-z_]+)`", text))  # `409 busy`
    found |= set(re.findall(r"^\| [45]\d\d \| `([a-z_]+)` \|", text, re.M))  # | 409 | `busy` | tables
    found |= set(re.findall(r'"error": "([a-z_]+)"', text))  # JSON examples
    return found


def test_every_error_code_has_a_row_in_the_documents_table_and_no_row_is_unknown():
    table = documented_table()
    codes = {code.value for code in ErrorCode}
    assert sorted(codes - table.keys()) == [], "ErrorCode members missing from docs/protocol.md's table of codes"
    assert sorted(table.keys() - codes) == [], "docs/protocol.md documents codes that ErrorCode does not have"


def test_every_code_the_document_mentions_exists():
    mentioned = documented_anywhere()
    assert {"busy", "secagg_bad_share", "tls_required", "too_many_connections"} <= mentioned, mentioned
    assert sorted(mentioned - {code.value for code in ErrorCode}) == []


def test_every_header_and_route_is_in_the_document():
    text = PROTOCOL.read_text(encoding="utf-8")
    headers = [value for name, value in vars(http).items() if name.endswith("_HEADER")]
    assert len(headers) == 4, headers  # specs, repetition, config, deadline (#21)
    assert [h for h in headers if f"`{h}" not in text] == []
    assert [r for r in ROUTES if f"`{r.method} {{base}}{r.path}" not in text] == []


def test_codes_are_their_strings_on_the_wire():
    assert json.dumps({"error": ErrorCode.BUSY}) == '{"error": "busy"}'
    assert ErrorCode.BUSY == "busy" and f"{ErrorCode.BUSY}" == "busy" and str(ErrorCode.BUSY) == "busy"
    answer = ApiError(409, ErrorCode.SPECS_MISMATCH, "different").get_response()
    assert answer.status_code == 409 and answer.get_data() == b'{"error": "specs_mismatch", "message": "different"}'


# -- no code outside the enum ----------------------------------------------------------------


def literal_codes(root: Path) -> list[str]:
    """``path:line`` of every error code written as a string literal under ``root`` (except wire/http.py).

    Found: ``ApiError(status, "code", ...)`` and the same through a subclass or its
    ``super().__init__``, or the gateway's ``_canned(status, "code", ...)``; a keyword
    ``error="code"``; a dict literal ``{"error": "code"}``; and any string equal to a known
    code (a side that compares or sends a code by its spelling).
    """
    known = {code.value for code in ErrorCode}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.parts[-2:] == ("wire", "http.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        raisers = {"ApiError"} | {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "ApiError" for b in node.bases)
        }
        for node in ast.walk(tree):
            literal = None
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                is_super_init = (
                    name == "__init__" and isinstance(func, ast.Attribute) and "super" in ast.dump(func.value)
                )
                if (name in ("ApiError", "_canned") or is_super_init) and len(node.args) >= 2:
                    literal = node.args[1]
                for keyword in node.keywords:
                    if keyword.arg == "error" and isinstance(keyword.value, ast.Constant):
                        literal = keyword.value
                if is_super_init and not any(raisers & {c.name} for c in _enclosing_classes(tree, node)):
                    literal = None
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "error" and isinstance(value, ast.Constant):
                        literal = value
            elif isinstance(node, ast.Constant) and node.value in known:
                literal = node
            if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                found.append(f"{path.relative_to(root.parent)}:{literal.lineno} {literal.value!r}")
    return found


def _enclosing_classes(tree: ast.AST, target: ast.AST) -> list[ast.ClassDef]:
    return [c for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and any(n is target for n in ast.walk(c))]


@pytest.mark.slow  # ~1.4 s: keeps the fast tier under 90 s
def test_no_error_code_is_a_string_literal_outside_the_enum():
    assert literal_codes(ROOT / "fedsync") == [], "use fedsync.wire.http.ErrorCode (and document the code)"
    # What the device's sources use covers at least the codes the old text check pinned.
    used = set(re.findall(r"ErrorCode\.([A-Z_]+)", "".join(p.read_text() for p in (ROOT / "fedsync").rglob("*.py"))))
    assert {"BUSY", "STALE_REPETITION", "BAD_REPETITION", "BAD_HOST", "HEADERS_TOO_LARGE"} <= used, used
    assert sorted(used - ErrorCode.__members__.keys()) == []


def test_the_literal_check_sees_each_form(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "bad.py").write_text(
        "raise ApiError(400, 'made_up', 'x')\n"
        "send_error(400, error='made_up_too')\n"
        "body = {'error': 'third', 'message': 'x'}\n"
        "class Special(ApiError):\n"
        "    def __init__(self):\n"
        "        super().__init__(409, 'fourth', 'x')\n"
        "raise ApiError(400, ErrorCode.BUSY, 'fine')\n"
        "reply = {'error': exc.reason}\n"
        "canned = _canned('400 Bad Request', 'fifth', 'x')\n"
        "if code == 'busy':\n"
        "    pass\n"
    )
    found = sorted(line.split(" ", 1)[1] for line in literal_codes(package))
    assert found == ["'busy'", "'fifth'", "'fourth'", "'made_up'", "'made_up_too'", "'third'"]


# Protocol v1's names, as devices in the field and files on disk spell them. A rename in the code is a wire
# change (a device of another version would lose the value without an error), so these are written out here,
# not read from the code: a test that imported the constants would follow a rename (as one did, once).
V1_METADATA_KEYS = {
    ("fedsync.data.arrays", "SAMPLES_KEY"): "fedsync.samples",
    ("fedsync.data.arrays", "METRICS_KEY"): "fedsync.metrics",
    ("fedsync.data.arrays", "SPECS_KEY"): "fedsync.specs",
    ("fedsync.data.bundle", "PARTS_KEY"): "fedsync.parts",
    ("fedsync.wire.compression", "WIRE_KEY"): "fedsync.wire",
    ("fedsync.secagg.device", "MASKED_KEY"): "fedsync.secagg",
    ("fedsync.coordinator.checkpoint", "STRATEGY_KEY"): "fedsync.strategy",
}
V1_LOGGERS = {
    "fedsync.device.app": "fedsync.server",
    "fedsync.device._state": "fedsync.server",
    "fedsync.device.serving": "fedsync.server",
    "fedsync.gateway.server": "fedsync.server",
    "fedsync.dashboard.app": "fedsync.dashboard",
    "fedsync.coordinator.callbacks": "fedsync.callbacks",
    "fedsync.coordinator.federated": "fedsync",
    "fedsync.plugins": "fedsync.plugins",
}


@pytest.mark.parametrize(("where", "value"), sorted(V1_METADATA_KEYS.items()))
def test_the_metadata_keys_are_protocol_v1s_and_documented(where, value):
    module, name = where
    assert getattr(importlib.import_module(module), name) == value, f"{module}.{name} changed the wire format"
    text = PROTOCOL.read_text(encoding="utf-8")
    # A checkpoint's key is not the wire's; FedBundle's parts and wire_dtype's formats are not in protocol.md yet
    # (issue #24, a device in any language, documents them byte for byte).
    if name not in ("STRATEGY_KEY", "PARTS_KEY", "WIRE_KEY"):
        assert f"`{value}`" in text or f'"{value}"' in text, f"docs/protocol.md does not name {value}"


@pytest.mark.parametrize(("module", "logger"), sorted(V1_LOGGERS.items()))
def test_the_logger_names_users_configure_did_not_move_with_the_modules(module, logger):
    assert importlib.import_module(module).logger.name == logger
