"""The package's modules import each other without cycles (read from their source, nothing imported).

Every ``import`` and ``from ... import`` statement counts, at module level or inside a
function, relative or absolute. ``from pkg import name`` is an edge to ``pkg.name`` when that
is a module, and to ``pkg`` (its ``__init__``) otherwise; the packages a module sits in, which
Python runs first, are not edges of their own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightreasoner

ROOT = Path(lightreasoner.__file__).resolve().parent
PACKAGE = ROOT.name


def module_names() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``module`` (the file ``path``) imports anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != module)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: the package modules it imports}``."""
    names = module_names()
    return {module: imported(module, path, set(names)) for module, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reads_relative_and_function_level_imports():
    graph = import_graph()
    assert "lightreasoner.io" in graph["lightreasoner.sampling"]  # from .io import ... (module level)
    assert "lightreasoner.evaluation.grading" in graph["lightreasoner.evaluation.benchmarks"]  # two levels
    assert "lightreasoner.methods.lightr" in graph["lightreasoner.methods"]  # a package __init__ and its submodule
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_the_cli():
    importers = {module for module, targets in import_graph().items() if f"{PACKAGE}.cli" in targets}
    assert importers <= {f"{PACKAGE}.__main__"}, importers
