"""The layout keeps its shape: no import cycles, folders import only downward, no module over 600 lines.

Pure ``ast``: nothing of fedsync (or of torch, Keras, Ray) is imported, so the checks run in well under a second.

Every import is read: at module level and inside functions, relative and absolute. Imports that
``importlib.import_module`` makes are not seen (the plugin registry's ``DEFAULT_PLUGINS``, the CLI and the demo
loading user code by name); they load by name on purpose and are no part of the static layout.

``TYPE_CHECKING`` imports are exempt from the upward rule but count for cycles. A lower layer may name a higher
layer's type in an annotation (a hook spec naming ``Federated``) without running a line of it; but two modules that
name each other, even only for the type checker, cannot be read or checked one before the other, so a cycle through
a ``TYPE_CHECKING`` import is a cycle. (A ``TYPE_CHECKING`` import that closes a cycle is exactly the pattern that
hides one from the interpreter while it stays in the design.)

The checks take a root directory, and the ``test_*_fails_*`` tests below run each of them on a small broken tree
written to ``tmp_path``: a check that cannot fail is a defect.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedsync", "fedsync_keras", "fedsync_torch", "fedsync_ray")
ADAPTER_PACKAGES = ("fedsync_keras", "fedsync_torch", "fedsync_ray")
MAX_LINES = 600

LAYERS: tuple[tuple[str, ...], ...] = (
    ("fedsync.errors", "fedsync._version", "fedsync._util"),
    ("fedsync.wire",),
    ("fedsync.privacy",),
    ("fedsync.strategies",),
    ("fedsync.protocol",),
    ("fedsync.plugins",),
    ("fedsync.data",),
    ("fedsync_keras", "fedsync_torch"),
    ("fedsync.secagg",),
    ("fedsync.gateway",),
    ("fedsync.device",),
    ("fedsync.transports",),
    ("fedsync_ray",),
    ("fedsync.dashboard",),
    ("fedsync.coordinator",),
    ("fedsync.aggregator",),
    ("fedsync.client", "fedsync"),
    ("fedsync.demo",),
    ("fedsync.cli",),
    ("fedsync.__main__",),
)
"""Bottom-up. Each entry is a folder (every module under it) or a top-level module. A module may import its own
entry, any entry of its own layer, and any lower layer. ``fedsync`` alone is ``fedsync/__init__.py``, the short
list. The adapter distributions sit just above what they import: Keras and torch above ``data``; Ray above
``transports``, below the coordinator whose ``run_simulation(backend="ray")`` loads it. The demo sits below the
CLI, which imports it for ``fedsync demo``; ``python -m fedsync`` runs the CLI from the top."""

ENTRY_POINTS: dict[tuple[str, str], str] = {
    ("fedsync.demo.__main__", "fedsync.cli"): (
        "`python -m fedsync.demo` is `fedsync demo`: the entry point runs the CLI, which imports demo/; "
        "nothing else in demo/ imports the CLI"
    ),
}
"""The only upward imports: ``(importer module, imported layer entry): why it is an entry point``."""


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``importer`` takes ``names`` from ``target`` at ``path:line``."""

    importer: str
    target: str
    names: tuple[str, ...]
    path: str
    line: int
    typing_only: bool


def module_name(root: Path, path: Path) -> str:
    """``fedsync/wire/codec.py`` -> ``fedsync.wire.codec``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the four packages under ``root``, by dotted name."""
    return {module_name(root, path): path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers of the statements under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.If):
            continue
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
        if name == "TYPE_CHECKING":
            for statement in node.body:
                for inner in ast.walk(statement):
                    if hasattr(inner, "lineno"):
                        lines.add(inner.lineno)
    return lines


def imports(root: Path) -> list[Import]:
    """Every import between modules of the four packages, resolved to the module it loads.

    ``from package import name`` targets ``package.name`` when that is a module, else the package's
    ``__init__.py``. Imports of other distributions (numpy, requests, ...) are left out.
    """
    files = module_files(root)
    found: list[Import] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        typing_only = type_checking_lines(tree)
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        shown = str(path.relative_to(root))
        for node in ast.walk(tree):
            pairs: list[tuple[str, tuple[str, ...]]] = []
            if isinstance(node, ast.Import):
                pairs = [(alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    pairs.append((submodule, ()) if submodule in files else (source, (alias.name,)))
            targets: dict[str, tuple[str, ...]] = {}
            for target, names in pairs:
                while target and target not in files:  # `import a.b.c` where c is a name: the nearest module
                    target = target.rpartition(".")[0]
                if target and target != module:
                    targets[target] = targets.get(target, ()) + names
            for target, names in targets.items():
                found.append(Import(module, target, names, shown, node.lineno, node.lineno in typing_only))
    return found


def layer_entry(module: str) -> str | None:
    """The entry of ``LAYERS`` that ``module`` belongs to: the longest folder or module that contains it."""
    best = None
    for layer in LAYERS:
        for entry in layer:
            inside = module == entry or (entry != "fedsync" and module.startswith(entry + "."))
            if inside and (best is None or len(entry) > len(best)):
                best = entry
    return best


def layer_index(entry: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if entry in layer)


def cycles(found: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in found:
        graph.setdefault(edge.importer, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph[node]):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_cycles(found: list[Import], component: list[str]) -> list[list[str]]:
    """For each module of a strongly connected component, the shortest cycle through it (breadth-first), deduplicated.

    A component can hold many cycles; these are the ones to open, one per module, each written from its
    alphabetically first module.
    """
    inside = set(component)
    graph: dict[str, list[str]] = {module: [] for module in component}
    for edge in found:
        if edge.importer in inside and edge.target in inside and edge.target not in graph[edge.importer]:
            graph[edge.importer].append(edge.target)
    seen: set[tuple[str, ...]] = set()
    result = []
    for start in component:
        before: dict[str, str] = {}
        queue = [start]
        while queue and start not in before:
            node = queue.pop(0)
            for after in sorted(graph[node]):
                if after not in before:
                    before[after] = node
                    queue.append(after)
        back = [start]  # walked backwards from start to the module that imports start
        while before[back[-1]] != start:
            back.append(before[back[-1]])
        path = [start] + back[:0:-1]  # start -> ... -> the module that imports start
        first = path.index(min(path))
        cycle = tuple(path[first:] + path[:first])
        if cycle not in seen:
            seen.add(cycle)
            result.append(list(cycle))
    return sorted(result, key=lambda cycle: (len(cycle), cycle))


def cycle_problems(root: Path) -> list[str]:
    """One text per cycle: its modules in order, and the imports that tie each step (file:line, names)."""
    found = imports(root)
    problems = []
    for component in cycles(found):
        for cycle in shortest_cycles(found, component):
            steps = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
            ties = [
                f"  {edge.path}:{edge.line} {edge.importer} -> {edge.target}: {', '.join(edge.names) or '(module)'}"
                + (" [TYPE_CHECKING]" if edge.typing_only else "")
                for step in steps
                for edge in found
                if (edge.importer, edge.target) == step
            ]
            problems.append(f"cycle: {' -> '.join(cycle + cycle[:1])}\n" + "\n".join(ties))
    return problems


def upward_problems(root: Path) -> list[str]:
    """Every import from a lower layer to a higher one that ``ENTRY_POINTS`` does not allow, and unused allowances."""
    problems = []
    used = set()
    for module in module_files(root):
        if layer_entry(module) is None:
            problems.append(f"{module}: in no layer; add it to LAYERS in tests/project/test_layers.py")
    for edge in imports(root):
        source, target = layer_entry(edge.importer), layer_entry(edge.target)
        if source is None or target is None or edge.typing_only:
            continue
        if layer_index(target) <= layer_index(source):
            continue
        if (edge.importer, target) in ENTRY_POINTS:
            used.add((edge.importer, target))
            continue
        problems.append(
            f"{edge.path}:{edge.line} {edge.importer} ({source}) imports {edge.target} ({target}), a higher layer: "
            f"{', '.join(edge.names) or '(module)'}"
        )
    problems += [
        f"ENTRY_POINTS allows {pair}, but no such import exists: remove it" for pair in ENTRY_POINTS.keys() - used
    ]
    return problems


def size_problems(root: Path) -> list[str]:
    """Every module over ``MAX_LINES`` lines."""
    problems = []
    for path in module_files(root).values():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_LINES:
            problems.append(f"{path.relative_to(root)}: {count} lines (at most {MAX_LINES}): split it by concept")
    return problems


def private_problems(root: Path) -> list[str]:
    """Imports from an adapter distribution into a private fedsync module or of a private fedsync name."""
    problems = []
    for edge in imports(root):
        if edge.importer.split(".")[0] not in ADAPTER_PACKAGES or edge.target.split(".")[0] != "fedsync":
            continue
        private_path = any(part.startswith("_") and not part.startswith("__") for part in edge.target.split("."))
        private_names = [name for name in edge.names if name.startswith("_")]
        if private_path or private_names:
            problems.append(
                f"{edge.path}:{edge.line} {edge.importer} imports {edge.target} "
                f"{', '.join(edge.names) or '(module)'}: adapter packages use only public fedsync modules and names"
            )
    return problems


@pytest.mark.slow  # ~1.1 s: keeps the fast tier under 90 s
def test_no_import_cycles() -> None:
    problems = cycle_problems(ROOT)
    assert not problems, "import cycles (open each with a move, see docs/architecture.md):\n" + "\n".join(problems)


def test_folders_import_only_downward() -> None:
    problems = upward_problems(ROOT)
    assert not problems, "imports that run back up the layers:\n" + "\n".join(problems)


def test_no_module_over_600_lines() -> None:
    problems = size_problems(ROOT)
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # ~1.1 s: keeps the fast tier under 90 s
def test_adapter_packages_import_only_public_fedsync() -> None:
    problems = private_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_every_layer_entry_exists() -> None:
    files = module_files(ROOT)
    missing = [entry for layer in LAYERS for entry in layer if not any(layer_entry(m) == entry for m in files)]
    assert not missing, f"LAYERS names modules or folders that no longer exist: {missing}"


# The checks, each on a small tree that breaks it.


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
    return root


def test_a_cycle_through_a_function_level_import_fails(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "fedsync/__init__.py": "",
            "fedsync/wire/__init__.py": "",
            "fedsync/wire/a.py": "from .b import B\n",
            "fedsync/wire/b.py": "def f():\n    from fedsync.wire import a\n",
        },
    )
    [problem] = cycle_problems(root)
    assert problem.startswith("cycle: fedsync.wire.a -> fedsync.wire.b -> fedsync.wire.a\n")
    assert "fedsync/wire/a.py:1 fedsync.wire.a -> fedsync.wire.b: B" in problem
    assert "fedsync/wire/b.py:2 fedsync.wire.b -> fedsync.wire.a: (module)" in problem


def test_a_cycle_through_a_type_checking_import_fails(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "fedsync/__init__.py": "",
            "fedsync/coordinator/__init__.py": "",
            "fedsync/coordinator/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
            "fedsync/coordinator/b.py": "from .a import A\n",
        },
    )
    [problem] = cycle_problems(root)
    assert "[TYPE_CHECKING]" in problem


def test_an_upward_import_fails_and_an_entry_point_does_not(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "fedsync/__init__.py": "",
            "fedsync/wire/__init__.py": "",
            "fedsync/wire/codec.py": "import os\n\n\ndef f():\n    from ..device.app import DeviceApp\n",
            "fedsync/device/__init__.py": "",
            "fedsync/device/app.py": "from ..wire import codec\n",
            "fedsync/cli/__init__.py": "from ..demo import runner\n",
            "fedsync/demo/fleet.py": "from ..cli import main\n",
            "fedsync/demo/__init__.py": "",
            "fedsync/demo/runner.py": "",
            "fedsync/demo/__main__.py": "from ..cli import main\n",
            "fedsync/strategies/__init__.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fedsync.device\n"
            ),
        },
    )
    problems = upward_problems(root)
    assert problems[0].startswith("fedsync/demo/fleet.py:1 fedsync.demo.fleet (fedsync.demo) imports fedsync.cli")
    assert problems[1].startswith(
        "fedsync/wire/codec.py:5 fedsync.wire.codec (fedsync.wire) imports fedsync.device.app"
    )
    assert problems[2:] == []  # demo/__main__ -> cli is the allowed entry point
    ENTRY_POINTS[("fedsync.wire.codec", "fedsync.cli")] = "planted"
    try:
        assert upward_problems(root)[2:] == [
            "ENTRY_POINTS allows ('fedsync.wire.codec', 'fedsync.cli'), but no such import exists: remove it"
        ]
    finally:
        del ENTRY_POINTS[("fedsync.wire.codec", "fedsync.cli")]


def test_a_module_in_no_layer_fails(tmp_path: Path) -> None:
    root = write(tmp_path, {"fedsync/__init__.py": "", "fedsync/attic.py": ""})
    assert "fedsync.attic: in no layer" in upward_problems(root)[0]


def test_a_long_module_fails(tmp_path: Path) -> None:
    root = write(tmp_path, {"fedsync/__init__.py": "", "fedsync/wire/codec.py": "x = 1\n" * (MAX_LINES + 1)})
    assert size_problems(root) == [
        f"fedsync/wire/codec.py: {MAX_LINES + 1} lines (at most {MAX_LINES}): split it by concept"
    ]
    write(root, {"fedsync/wire/codec.py": "x = 1\n" * MAX_LINES})
    assert size_problems(root) == []


def test_an_adapter_reaching_into_a_private_module_or_name_fails(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "fedsync/__init__.py": "",
            "fedsync/device/__init__.py": "",
            "fedsync/device/_state.py": "",
            "fedsync/data/__init__.py": "",
            "fedsync/data/arrays.py": "",
            "fedsync_torch/__init__.py": (
                "from fedsync.device._state import Device\nfrom fedsync.data.arrays import _x\n"
            ),
            "fedsync_ray/__init__.py": "from fedsync.data.arrays import FedArrays\nfrom fedsync.device import _state\n",
        },
    )
    problems = private_problems(root)
    assert [problem.split(" ")[0] for problem in problems] == [
        "fedsync_torch/__init__.py:1",
        "fedsync_torch/__init__.py:2",
        "fedsync_ray/__init__.py:2",
    ]
