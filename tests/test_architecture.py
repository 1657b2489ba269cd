"""The layer rule, enforced: no import cycles between modules, and the import-linter contract.

The cycle test reads every module's imports with ``ast`` (module-level and inside functions,
relative ones resolved) and sorts the graph with ``graphlib``; any cycle fails, named.
"""

from __future__ import annotations

import ast
import graphlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cxrguide

PACKAGE = Path(cxrguide.__file__).parent
ROOT = PACKAGE.parent.parent


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (a package's ``__init__`` is its name)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    stem = base[: len(base) - node.level + 1]
                    origin = ".".join(stem + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" for a in node.names] + [origin]
                # "from pkg import module" depends on the module, else on pkg itself
                targets = [t for t in targets[:-1] if t in modules] or [origin]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def test_the_graph_sees_real_imports():
    graph = import_graph()
    assert "cxrguide.core.runs" in graph["cxrguide.models.saved"]
    assert "cxrguide.training.stage_run" in graph["cxrguide.training.finetune"]


def test_no_module_imports_another_that_imports_it_back():
    try:
        list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_a_cycle_is_caught(tmp_path):
    pkg = tmp_path / "cxrguide"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from cxrguide.a import y\n")
    (pkg / "a" / "y.py").write_text("def f():\n    from . import x\n")
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(import_graph(pkg)).static_order())


def test_layers_contract_is_kept():
    """``lint-imports`` with pyproject.toml's layers contract (the dev extra installs it)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("lint-imports not installed (pip install -e '.[dev]')")
    done = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_dead_code():
    """``vulture`` with pyproject.toml's settings (confidence 60, vulture_whitelist.py)."""
    exe = shutil.which("vulture", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("vulture not installed (pip install -e '.[dev]')")
    done = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
