"""Documentation that the code relies on exists and stays in step with it."""

import ast
import inspect
import re
from pathlib import Path

import fedsync
from fedsync import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def hook_names():
    return [name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "fedsync_spec")]


def test_every_hook_has_a_docstring_and_a_heading_in_docs_plugins():
    text = (ROOT / "docs" / "plugins.md").read_text()
    names = hook_names()
    assert names, "no hook specs found"
    for name in names:
        assert inspect.getdoc(getattr(hookspecs, name)), f"hook {name} has no docstring"
        assert re.search(rf"^### `{name}`$", text, re.M), f"docs/plugins.md has no '### `{name}`' heading"


def own_docstring(name: str) -> str | None:
    """The docstring fedsync itself wrote for ``fedsync.<name>``: a class's or function's own
    (``inspect.getdoc`` would return one inherited from a base class or from ``int``), or, for a
    constant, the string literal right after its assignment in a fedsync module."""
    obj = getattr(fedsync, name)
    if inspect.isclass(obj):
        return vars(obj).get("__doc__")
    if inspect.isfunction(obj):
        return obj.__doc__
    for path in sorted((ROOT / "fedsync").rglob("*.py")):
        body = ast.parse(path.read_text()).body
        for statement, following in zip(body, body[1:]):
            targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                    return following.value.value
    return None


def test_every_public_name_has_its_own_docstring():
    missing = [name for name in fedsync.__all__ if not (own_docstring(name) or "").strip()]
    assert missing == []


def test_an_inherited_docstring_does_not_count():
    class Undocumented(fedsync.FedData):
        pass

    fedsync.Undocumented = Undocumented
    try:
        assert inspect.getdoc(Undocumented)  # what the old check accepted
        assert own_docstring("Undocumented") is None
    finally:
        del fedsync.Undocumented


def test_protocol_doc_lists_every_error_code_the_server_raises():
    source = "".join((ROOT / "fedsync" / name).read_text() for name in ("server.py", "device.py", "gateway.py"))
    codes = set(re.findall(r'ApiError\(\s*\d+,\s*"([a-z_]+)"', source))
    codes |= set(re.findall(r'error="([a-z_]+)"', source))  # the gateway's own answers
    codes |= set(re.findall(r'^\s+\d{3}: "([a-z_]+)",$', source, re.M))  # and its defaults by status
    assert {"busy", "stale_repetition", "bad_repetition", "bad_host", "headers_too_large"} <= codes, codes
    text = (ROOT / "docs" / "protocol.md").read_text()
    undocumented = sorted(code for code in codes if f"`{code}`" not in text)
    assert undocumented == []
