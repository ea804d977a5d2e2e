"""The tests mirror the tree, and helpers live apart from tests (issue #19, item 6).

A reader finds a module's tests by its path: ``tests/<folder>/`` holds the tests of ``fedsync/<folder>/`` (or of the
module ``fedsync/<folder>.py``, or of a separate distribution such as ``fedsync_keras/``). Two folders have no
counterpart on purpose: ``tests/support/`` (helpers, device factories, process entry points) and ``tests/project/``
(the repository as a whole: docs, packaging, the layout). No test file sits directly in ``tests/``.

A test module imports helpers from ``tests/support/`` only: never from a ``conftest.py`` (pytest loads those for
their fixtures and hooks; a fixture is found by its name, not imported) and never from another test module (that
module would run its own import-time skips, and its tests could not move without breaking the other).

Pure ``ast``, as ``test_layers.py``: nothing is imported. The checks take a root directory, and the
``test_*_fails_*`` tests below run each of them on a small broken tree written to ``tmp_path``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_FOLDERS = {"support": "helpers, not tests", "project": "the repository as a whole"}


def _imported(module: str, tree: ast.AST) -> list[tuple[int, str, tuple[str, ...]]]:
    """Every import of a module ``module`` (dotted, e.g. ``tests.device.test_app``) makes: ``(line, target, names)``.

    Relative imports are resolved against ``module``'s package; ``names`` are the names a ``from`` import takes.
    """
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, target, tuple(alias.name for alias in node.names)))
    return found


def _is_test_module_or_conftest(dotted: str) -> bool:
    last = dotted.rsplit(".", 1)[-1]
    return dotted.startswith("tests.") and (last == "conftest" or last.startswith("test_"))


def imports_of_tests_and_conftests(root: Path) -> list[str]:
    """Where a file under ``root/tests`` imports a test module or a conftest: ``"path:line imports target"``."""
    bad = []
    for path in sorted((root / "tests").rglob("*.py")):
        relative = path.relative_to(root)
        module = ".".join(relative.with_suffix("").parts)
        for line, target, names in _imported(module, ast.parse(path.read_text(), str(path))):
            # `from tests.device import test_app` names the module in the imported names.
            targets = [target] + [f"{target}.{name}" for name in names]
            for dotted in targets:
                if _is_test_module_or_conftest(dotted):
                    bad.append(f"{relative}:{line} imports {dotted}")
                    break
    return bad


def folders_without_counterpart(root: Path) -> list[str]:
    """The folders of ``root/tests`` that mirror no package folder, module or distribution, and test files that sit
    directly in ``tests/`` (in no folder at all)."""
    bad = [f"tests/{path.name}: a test file in no folder" for path in sorted((root / "tests").glob("test_*.py"))]
    for folder in sorted(p for p in (root / "tests").iterdir() if p.is_dir()):
        name = folder.name
        if name in ALLOWED_FOLDERS or name.startswith((".", "__")):
            continue
        counterparts = [
            root / "fedsync" / name / "__init__.py",  # a package folder: tests/device <-> fedsync/device/
            root / "fedsync" / f"{name}.py",  # a module that is a layer alone: tests/privacy <-> fedsync/privacy.py
        ]
        if name.startswith("fedsync_"):
            counterparts.append(root / name / "__init__.py")  # a separate distribution: fedsync_keras/
        if not any(path.is_file() for path in counterparts):
            bad.append(f"tests/{name}/: no fedsync/{name}/, fedsync/{name}.py or {name}/ package to mirror")
    return bad


# -- the checks on this repository --------------------------------------------------------------


@pytest.mark.slow  # ~1.1 s: keeps the fast tier under 90 s
def test_no_test_module_imports_a_conftest_or_another_test_module():
    assert imports_of_tests_and_conftests(ROOT) == [], (
        "move shared helpers to tests/support/, shared fixtures to a conftest.py"
    )


def test_every_tests_folder_mirrors_a_package_folder():
    assert folders_without_counterpart(ROOT) == []


# -- each check fails on a planted violation ------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_import_check_fails_on_imports_of_a_conftest_or_a_test_module(tmp_path):
    TESTS = "tests"  # spelled apart, so that a grep for such imports does not find this planted tree
    root = _tree(tmp_path, {
        "tests/__init__.py": "",
        "tests/conftest.py": "ROOT = 1\n",
        "tests/device/__init__.py": "",
        "tests/device/conftest.py": "",
        "tests/device/test_a.py": f"from {TESTS}.conftest import ROOT\nfrom tests.support.processes import ROOT\n",
        "tests/device/test_b.py": "from tests.device import test_a as other\n",
        "tests/device/test_c.py": "def test():\n    import tests.device.test_a\n",
        "tests/device/test_d.py": "from .test_a import ROOT\nfrom . import conftest\n",
        "tests/support/__init__.py": "",
        "tests/support/processes.py": f"from {TESTS}.device.test_a import ROOT\n",
    })  # fmt: skip
    assert imports_of_tests_and_conftests(root) == [
        "tests/device/test_a.py:1 imports tests.conftest",
        "tests/device/test_b.py:1 imports tests.device.test_a",
        "tests/device/test_c.py:2 imports tests.device.test_a",
        "tests/device/test_d.py:1 imports tests.device.test_a",
        "tests/device/test_d.py:2 imports tests.device.conftest",
        "tests/support/processes.py:1 imports tests.device.test_a",
    ]


def test_the_folder_check_fails_on_a_folder_that_mirrors_nothing(tmp_path):
    root = _tree(tmp_path, {
        "fedsync/__init__.py": "",
        "fedsync/device/__init__.py": "",
        "fedsync/privacy.py": "",
        "fedsync_keras/__init__.py": "",
        "tests/__init__.py": "",
        "tests/test_flat.py": "",
        "tests/device/test_app.py": "",
        "tests/privacy/test_dp.py": "",
        "tests/fedsync_keras/test_adapter.py": "",
        "tests/support/helpers.py": "",
        "tests/project/test_docs.py": "",
        "tests/helpers/test_misc.py": "",  # mirrors nothing
        "tests/fedsync_ray/test_ray.py": "",  # a distribution that does not exist
    })  # fmt: skip
    assert folders_without_counterpart(root) == [
        "tests/test_flat.py: a test file in no folder",
        "tests/fedsync_ray/: no fedsync/fedsync_ray/, fedsync/fedsync_ray.py or fedsync_ray/ package to mirror",
        "tests/helpers/: no fedsync/helpers/, fedsync/helpers.py or helpers/ package to mirror",
    ]
