"""What the README and examples/README tell a newcomer to type: their fenced blocks, read as the tests run them."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES_README = ROOT / "examples" / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def section(path: Path, heading: str) -> str:
    """The text under ``heading`` (a Markdown heading line, e.g. ``"## Custom data"``), up to the next heading of its level or higher.

    Lines in fenced blocks are not headings (``# numpy`` in a Python block).
    """
    lines = path.read_text().splitlines(keepends=True)
    start = lines.index(heading + "\n")
    level = len(heading) - len(heading.lstrip("#"))
    fenced = False
    for end in range(start + 1, len(lines)):
        line = lines[end]
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            return "".join(lines[start:end])
    return "".join(lines[start:])


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``language`` (``python``, ``bash``, ``text``) in ``text``, in order."""
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks in ``text``: one per line, comments and blank lines left out."""
    found = []
    for body in blocks(text, "bash"):
        for line in body.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def table_commands(text: str) -> dict[str, str]:
    """A Markdown table's first cell (without backticks) and its last cell's command in backticks."""
    found = {}
    for row in re.findall(r"^\|(.*)\|$", text, re.M):
        cells = [c.strip() for c in row.split("|")]
        command = re.fullmatch(r"`([^`]+)`", cells[-1])
        if command:
            found[cells[0].strip("`").rstrip("/").removesuffix(".py")] = command.group(1)
    return found


def shell(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``command`` in bash as a newcomer would, with this checkout's fedsync.

    ``python`` is this interpreter, ``fedsync`` is ``python -m fedsync``: the
    console script on PATH may belong to another checkout, and the README's
    ``pip install`` line is never run here (it would repoint the shared install).
    """
    prelude = (
        f"python() {{ {shlex.quote(sys.executable)} \"$@\"; }}\n"
        f"fedsync() {{ {shlex.quote(sys.executable)} -m fedsync \"$@\"; }}\n"
        "export -f python fedsync\n"
    )
    full_env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH")) if p)
    # In a session of its own, so that whatever the command leaves behind is stopped with it: a device started
    # in the background through the ``fedsync`` function runs under a subshell that ``kill $!`` stops alone.
    process = subprocess.Popen(
        ["bash", "-c", prelude + command],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing of the command's is left
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
