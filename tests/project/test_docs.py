"""Documentation that the code relies on exists and stays in step with it."""

import ast
import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import fedsync
from fedsync.plugins import hookspecs
from fedsync.wire import reports
from tests.support import readme

ROOT = Path(__file__).resolve().parents[2]


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
                if (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
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


# -- the README as a newcomer follows it ----------------------------------------------


def pyproject_extras():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_the_two_commands_are_what_ci_runs_and_install_what_they_use():
    demo, tests = readme.commands(readme.section(readme.README, "## Two commands"))
    ci = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.endswith("python -m pytest"))
    # CI's pip is quiet (-q); otherwise the README's command is exactly what CI runs.
    assert tests == ci.replace("pip install -q ", "pip install "), "the README's test command must be .ci/run's"
    install, _, run = demo.partition(" && ")
    assert (install, run) == ('python -m pip install -e ".[demo]"', "fedsync demo")  # run by tests/demo/test_demo.py
    extras = " ".join(pyproject_extras()["demo"])
    assert "scikit-learn" in extras and "matplotlib" in extras, "the demo needs its data set and draws a plot"


def test_custom_data_snippets_print_what_the_readme_shows(tmp_path):
    text = readme.section(readme.README, "## Custom data")
    code = "\n".join(readme.blocks(text, "python"))  # the class, then the scripts using it
    shown = "".join(readme.blocks(text, "text"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown
    assert "(examples/custom_fedfloat/)" in text


def test_the_fast_tier_command_in_the_readme_is_the_marker_pytest_knows():
    text = readme.section(readme.README, "## Two commands")
    assert '`python -m pytest -m "not slow"`' in text
    assert 'pytest -m \\"not slow\\"` is the fast tier' in (ROOT / "pyproject.toml").read_text()


def test_every_history_field_has_its_own_docstring():
    """RoundResult, EvaluationResult and ServerEvaluation: each field is followed by a docstring (its meaning and unit)."""
    tree = ast.parse((ROOT / "fedsync" / "coordinator" / "history.py").read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    undocumented = []
    for name in ("RoundResult", "EvaluationResult", "ServerEvaluation"):
        body = classes[name].body
        seen = [field for field in body if isinstance(field, ast.AnnAssign)]
        assert [f.target.id for f in seen] == [f.name for f in dataclasses.fields(getattr(fedsync, name))]
        for field, after in zip(body, body[1:] + [None]):
            if isinstance(field, ast.AnnAssign):
                documented = (
                    isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and str(after.value.value).strip()
                )
                if not documented:
                    undocumented.append(f"{name}.{field.target.id}")
    assert undocumented == []


# Names that look like modules but are keys of a payload's or a file's metadata (docs/protocol.md).
METADATA_KEYS = {"fedsync.samples", "fedsync.metrics", "fedsync.specs", "fedsync.parts", "fedsync.adapter"} | {
    reports.WEIGHTS_KEY,  # "fedsync.metric_weights", "fedsync.failures": an aggregator's reply (#21)
    reports.FAILURES_KEY,
    "fedsync.delta",  # a reply of updates (#25, fedsync/data/_updates.py DELTA_KEY)
    "fedsync.view",  # the download as a delta (#25, fedsync/data/_views.py)
    "fedsync.base",
    "fedsync.reply_format",
    "fedsync.updates",
}
DOTTED = re.compile(r"\b(fedsync(?:_ray|_torch|_keras)?(?:\.[A-Za-z_]\w*)+)")
FROM_IMPORT = re.compile(r"from\s+(fedsync[\w.]*)\s+import\s+\(?([\w\s,]+)")


def _unresolved(name: str) -> str | None:
    """Why ``name`` (``package.module.attribute...``) does not resolve, or None when it does."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            target = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # a shorter prefix may be the module
            raise
        for attribute in parts[i:]:
            if not hasattr(target, attribute):
                return f"{module_name} has no {'.'.join(parts[i:])}"
            target = getattr(target, attribute)
        return None
    return "no such module"


def named_in_prose(path: Path) -> dict[str, int]:
    """Every ``fedsync...`` dotted name and ``from fedsync... import X`` in ``path``, with its first line."""
    found: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        names = {m.group(1) for m in DOTTED.finditer(line) if not re.search(r"\.(py|md|toml|json|js)$", m.group(1))}
        for m in FROM_IMPORT.finditer(line):
            names |= {f"{m.group(1)}.{n}" for n in re.split(r"[\s,]+", m.group(2)) if n and n != "as"}
        for name in names - METADATA_KEYS:
            found.setdefault(name, number)
    return found


def test_every_module_and_name_the_docs_mention_exists():
    """A module moved or a class renamed leaves no stale path in README, docs/ or examples/ (prose included)."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.py"))]
    files += sorted((ROOT / "examples").rglob("*.md"))
    checked, stale = 0, []
    for path in files:
        for name, line in named_in_prose(path).items():
            checked += 1
            why = _unresolved(name)
            if why:
                stale.append(f"{path.relative_to(ROOT)}:{line} {name}: {why}")
    assert checked > 100  # the scan read the docs at all
    assert not stale, "\n".join(stale)
