"""``fedsync check URL``: passes against fedsync's own devices, and catches devices broken one way each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedsync.cli import main
from fedsync.cli._check_probe import SECTIONS
from tests.support.broken_devices import BROKEN, broken_device

ROOT = Path(__file__).resolve().parents[2]


def slug(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def check(url: str, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, list[str]]:
    code = main(["check", url, "--deadline", "60", *extra])
    return code, capsys.readouterr().out.splitlines()


def test_every_section_the_checker_names_is_a_heading_of_the_protocol():
    headings = {slug(m[1]) for m in re.finditer(r"^#+ (.+)$", (ROOT / "docs/protocol.md").read_text(), re.M)}
    assert set(SECTIONS.values()) - headings == set()


def test_fedsync_device_passes_every_check(capsys):
    with broken_device(None, token="s3cret") as url:
        code, lines = check(url, capsys, "--token", "s3cret")
    assert code == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith("FAIL")]
    names = {line.split(":")[0] for line in lines}
    assert {"PASS  specs rule", "PASS  token missing", "PASS  reply payload", "PASS  evaluate"} <= names
    assert lines[-1].startswith("29 passed, 0 failed, 0 skipped")


def test_a_device_without_evaluation_is_reported_not_supported(capsys):
    from fedsync import serve
    from tests.support.broken_devices import linear_model

    device = serve(linear_model(evaluate=False), port=0, block=False)
    try:
        code, lines = check(device.url, capsys)
    finally:
        device.close()
    assert code == 0, "\n".join(lines)
    assert "SKIP  evaluate: not supported (501 not_supported)" in lines


@pytest.mark.parametrize(
    "broken, failing, anchor",
    [
        ("wrong_specs_rule", "specs rule", "#the-rule-for-array-models"),
        # the others in the full suite (each serves a device): the fast tier stays under 90 s
        pytest.param("no_sample_count", "reply payload", "#array-payloads", marks=pytest.mark.slow),
        pytest.param("html_errors", "unknown route", "#errors", marks=pytest.mark.slow),
        pytest.param("wrong_status", "wrong specs", "#post-baserepsubmit", marks=pytest.mark.slow),
    ],
)
def test_a_broken_device_fails_with_the_section_it_breaks(broken, failing, anchor, capsys):
    with broken_device(BROKEN[broken]) as url:
        code, lines = check(url, capsys)
    assert code == 1
    failures = [line for line in lines if line.startswith("FAIL")]
    line = next((f for f in failures if f.startswith(f"FAIL  {failing}:")), None)
    assert line is not None, "\n".join(lines)
    assert line.endswith(f"[docs/protocol.md{anchor}]")
    if broken == "wrong_specs_rule":
        assert "keys not sorted" in line
    if broken == "no_sample_count":
        assert "fedsync.samples" in line
        assert len(failures) == 1, failures  # only the reply is wrong
