"""Loading a script of benchmarks/ as a module, for its smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str, keep_imports: bool = False) -> ModuleType:
    """benchmarks/``name``.py as a module, leaving this process's sys.path and sys.modules as they were.

    Its own imports (benchmarks/round.py as ``round``, ...) are dropped again after it ran, unless
    ``keep_imports``: a script that imports ``requests`` through fedsync must keep it, or a second copy of
    ``requests`` in the process would refuse the first one's cookie jar.
    """
    path, modules = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        for imported in set(sys.modules) - modules if not keep_imports else [spec.name]:
            del sys.modules[imported]
    return module
