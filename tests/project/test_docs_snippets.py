"""Every docs/ example that shows its output still prints exactly that output.

A runnable example is a ```python block followed by a line saying "prints" and an
unlabelled ``` block: the block runs in a fresh interpreter (cwd: a
temporary folder) and its standard output must equal the shown text, line by line.
Fragments (no output shown) are not run: they need the reader's data and model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = re.compile(
    r"```python\n(?P<code>(?:(?!```).)*?)\n```\n\s*\n(?!```)[^\n]*\bprints\b[^\n]*\n\s*\n```\n(?P<output>.*?)\n```",
    re.S,
)


def examples() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        text = path.read_text()
        for n, match in enumerate(EXAMPLE.finditer(text), 1):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{path.name}:{line}", match["code"], match["output"]))
    return found


EXAMPLES = examples()


def test_docs_show_runnable_examples_with_their_output():
    # guards the pattern itself: an edit that breaks it must not turn every example into a fragment
    assert len(EXAMPLES) >= 5, (
        "fewer docs examples with their output than were written with its output was found: check EXAMPLE against docs/*.md"
    )


@pytest.mark.slow  # a fresh interpreter per example, a few seconds each: the full suite runs them
@pytest.mark.parametrize("where, code, output", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_docs_example_prints_what_the_docs_show(where, code, output, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "FEDSYNC_PROGRESS": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-3000:]}"
    assert result.stdout.rstrip("\n").splitlines() == output.splitlines(), f"{where} printed:\n{result.stdout}"
