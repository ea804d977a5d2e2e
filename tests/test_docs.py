"""Documentation that the code relies on exists and stays in step with it."""

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


def test_every_public_name_has_a_docstring():
    missing = [name for name in fedsync.__all__ if not name.startswith("__") and not inspect.getdoc(getattr(fedsync, name))]
    assert missing == []


def test_protocol_doc_lists_every_error_code_the_server_raises():
    source = "".join((ROOT / "fedsync" / name).read_text() for name in ("server.py", "device.py", "gateway.py"))
    codes = set(re.findall(r'ApiError\(\s*\d+,\s*"([a-z_]+)"', source))
    codes |= set(re.findall(r'error="([a-z_]+)"', source))  # the gateway's own answers
    codes |= set(re.findall(r'^\s+\d{3}: "([a-z_]+)",$', source, re.M))  # and its defaults by status
    assert {"busy", "stale_repetition", "bad_repetition", "bad_host", "headers_too_large"} <= codes, codes
    text = (ROOT / "docs" / "protocol.md").read_text()
    undocumented = sorted(code for code in codes if f"`{code}`" not in text)
    assert undocumented == []
