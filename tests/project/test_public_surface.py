"""The public surface is declared: ``__all__`` lists what other modules import, and every error is in errors.py."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

import fedsync.coordinator.checkpoint
import fedsync.errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedsync", "fedsync_torch", "fedsync_keras")

IN_FLIGHT: set[tuple[str, str]] = set()
"""Modules other branches are editing as this is written: their ``__all__`` gains these names at merge (issue #15 B7)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cross_module_imports() -> set[tuple[str, str, str]]:
    """Every ``(module, name, importer)`` where one of our modules imports a public name from another."""
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            here = module_name(path).split(".")
            package_parts = here if path.name == "__init__.py" else here[:-1]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if node.level:
                    base = package_parts[: len(package_parts) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] not in PACKAGES or any(part.startswith("_") for part in target.split(".")):
                    continue  # third-party, or a private module: its names are private by the module's name
                is_package = hasattr(importlib.import_module(target), "__path__")
                for alias in node.names:
                    if alias.name.startswith("_") or (
                        is_package and importlib.util.find_spec(f"{target}.{alias.name}")
                    ):
                        continue  # a private name, or a submodule
                    found.add((target, alias.name, str(path.relative_to(ROOT))))
    return found


def test_every_name_one_module_imports_from_another_is_in_its_all():
    imports = cross_module_imports()
    assert len(imports) > 50  # the walk found our imports at all
    missing = sorted(
        (target, name, importer)
        for target, name, importer in imports
        if (target, name) not in IN_FLIGHT and name not in getattr(importlib.import_module(target), "__all__", ())
    )
    assert not missing, (
        f"imported across modules but not in the module's __all__ (add it, or rename it _private): {missing}"
    )
    stale = IN_FLIGHT - {(target, name) for target, name, _ in imports}
    assert not stale, f"no longer imported across modules: drop from IN_FLIGHT: {stale}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_exists(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        name = module_name(path)
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", ()):
            assert hasattr(module, public), f"{name}.__all__ lists {public!r}, which it does not define"


def test_checkpoint_error_lives_with_the_other_errors():
    assert "CheckpointError" in fedsync.errors.__all__
    assert fedsync.errors.CheckpointError.__module__ == "fedsync.errors"
    assert (
        fedsync.coordinator.checkpoint.CheckpointError is fedsync.errors.CheckpointError
    )  # the old import path still works
    assert issubclass(fedsync.errors.CheckpointError, fedsync.errors.FedSyncError)
    assert issubclass(fedsync.errors.CheckpointError, ValueError)


def documented_modules() -> tuple[set[str], set[str]]:
    """The public and the internal modules docs/modules.md names (its tables, then its Internal section)."""
    text = (ROOT / "docs" / "modules.md").read_text(encoding="utf-8")
    tables, internal = text.split("## Internal", 1)
    public = set(re.findall(r"`(fedsync(?:\.[a-z_]+)*)`", tables))
    return public, {f"fedsync.{name}" for name in re.findall(r"`(_?[a-z_]+(?:\._?[a-z_]+)*)`", internal)}


def whole_packages() -> set[str]:
    """Packages docs/modules.md lists with the words "its submodules are its layout": their modules are not listed one by one."""
    text = (ROOT / "docs" / "modules.md").read_text(encoding="utf-8")
    return {m for m, row in re.findall(r"^\| `(fedsync[a-z_.]*)` \|(.*)$", text, re.M) if "its layout" in row}


def all_modules() -> set[str]:
    """Every module and package under fedsync/, at any depth, by import name."""
    found = set()
    for path in (ROOT / "fedsync").rglob("*.py"):
        if path.stem == "__main__":
            continue
        found.add(module_name(path))
    return found


def top_level_modules() -> set[str]:
    """Every module and subpackage directly under fedsync/, by import name."""
    return {m for m in all_modules() if m.count(".") <= 1}


def private_roots(modules: set[str]) -> set[str]:
    """The outermost private modules: ``fedsync._util`` stands for everything under it."""
    roots = set()
    for m in modules:
        parts = m.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_"):
                roots.add(".".join(parts[: i + 1]))
                break
    return roots


def test_every_module_is_private_by_name_or_documented_as_public():
    public, internal = documented_modules()
    modules = all_modules()
    whole = whole_packages()
    assert {"fedsync.strategies", "fedsync.secagg", "fedsync.demo"} <= whole  # the walk read the table at all
    private = private_roots(modules)
    covered = {m for m in modules if any(m == p or m.startswith(p + ".") for p in private | whole)}
    assert sorted(modules - covered - public) == [], (
        "public modules missing from docs/modules.md (list them, or rename them _private)"
    )
    assert sorted(public - modules) == [], "docs/modules.md lists modules that do not exist"
    assert sorted(private ^ internal) == [], "docs/modules.md's Internal section must name exactly the _private modules"


@pytest.mark.parametrize("name", sorted(private_roots(all_modules()) - {"fedsync._version"}))
def test_internal_modules_export_nothing_at_the_top(name):
    module = importlib.import_module(name)
    top = importlib.import_module("fedsync")
    leaked = [public for public in top.__all__ if getattr(getattr(top, public), "__module__", "") == module.__name__]
    assert not leaked, f"fedsync.__all__ exports {leaked} from internal {name}"


def test_the_errors_a_round_raises_are_importable_from_fedsync():
    """The README names RoundFailed.failures and SpecsMismatch; users catch them without knowing fedsync.errors."""
    import fedsync
    from fedsync import errors

    assert fedsync.RoundFailed is errors.RoundFailed and fedsync.SpecsMismatch is errors.SpecsMismatch
    assert {"RoundFailed", "SpecsMismatch"} <= set(fedsync.__all__)
