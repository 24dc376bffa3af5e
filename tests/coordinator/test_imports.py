"""No import cycles in ``coordinator``, ``ktrdr`` and ``subjects``.

The import graph is read from the source: a module's top-level imports, those in ``if
TYPE_CHECKING:`` blocks counted apart, function-local ones not at all (they are how a module reaches
one that loads late on purpose). At run time there must be no cycle; counting type-only imports too,
none but those listed in :data:`KNOWN_TYPE_ONLY_CYCLES`, each waiting for its cut.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coordinator", "ktrdr", "subjects")

# Cycles that exist only through ``if TYPE_CHECKING:`` imports, with what would cut them. A cycle cut
# must be taken off this list (the test says so), and none may join it.
KNOWN_TYPE_ONLY_CYCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _known(name: str) -> str | None:
    """The module of ours that importing ``name`` loads (its innermost), if any."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, *, type_only: bool) -> set[str]:
    """The modules of ours that ``module`` imports at its top level (and in TYPE_CHECKING blocks too,
    with ``type_only``)."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _type_checking(node.test) or type_only:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(m for alias in node.names if (m := _known(alias.name)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:  # ``from package import module`` imports the module
                    if (m := _known(f"{base}.{alias.name}")) is not None:
                        found.add(m)

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    found.discard(module)
    return found


def _graph(*, type_only: bool) -> dict[str, set[str]]:
    return {module: _imports(module, type_only=type_only) for module in _modules()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other (Tarjan's strongly connected components), as one
    cycle through it: ``[a, b, a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_through(graph, group) for group in groups]


def _cycle_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    start = min(group)
    paths = [[start]]
    seen = {start}
    while paths:  # breadth first: the shortest way back to the start
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & group):
            if w == start:
                return [*path, start]
            if w not in seen:
                seen.add(w)
                paths.append([*path, w])
    raise AssertionError(f"no cycle through {sorted(group)}")


def _named(cycles: list[list[str]]) -> str:
    return "; ".join(" → ".join(cycle) for cycle in cycles)


def test_the_graph_is_read_from_every_module_of_the_three_packages() -> None:
    graph = _graph(type_only=False)
    assert {"coordinator.lifecycle", "ktrdr.optypes.defn", "subjects.models"} <= set(graph)
    assert {"coordinator.lifecycle", "coordinator.mirror"} <= graph["coordinator.store"]
    assert "coordinator.fold" in graph["coordinator.app"]
    assert "coordinator.dashboard.catalog" in graph["coordinator.api"]  # from coordinator.dashboard.catalog import


def test_a_cycle_is_named_by_the_modules_on_it_shortest_way_round() -> None:
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "a"]]


def test_no_module_imports_itself_back_at_run_time() -> None:
    cycles = _cycles(_graph(type_only=False))
    assert not cycles, f"import cycles: {_named(cycles)}"


def test_no_module_imports_itself_back_even_through_type_hints_but_the_known_ones() -> None:
    cycles = _cycles(_graph(type_only=True))
    new = [c for c in cycles if frozenset(c) not in KNOWN_TYPE_ONLY_CYCLES]
    assert not new, f"import cycles through type-only imports: {_named(new)}"
    gone = KNOWN_TYPE_ONLY_CYCLES - {frozenset(c) for c in cycles}
    assert not gone, f"cut, so take them off KNOWN_TYPE_ONLY_CYCLES: {[sorted(c) for c in gone]}"


@pytest.mark.parametrize("pair", [("coordinator.api", "coordinator.app"), ("coordinator.app", "coordinator.routes"),
                                  ("coordinator.routes", "coordinator.dashboard.routes"),
                                  ("ktrdr.optypes.defn", "ktrdr.optypes.parent")], ids=" and ".join)
def test_the_cycles_named_in_issue_25_are_cut_even_for_type_hints(pair: tuple[str, str]) -> None:
    together = [c for c in _cycles(_graph(type_only=True)) if set(pair) <= set(c)]
    assert not together, _named(together)


def test_the_lifecycle_depends_on_the_record_alone() -> None:
    imported = _imports("coordinator.lifecycle", type_only=True)
    assert imported <= {"subjects.models", "subjects.limits"}, imported


@pytest.mark.parametrize("module", ["coordinator.app", "coordinator.api", "coordinator.routes",
                                    "coordinator.dashboard.routes", "ktrdr.optypes.parent", "ktrdr.optypes.defn",
                                    "coordinator.lifecycle"])
def test_a_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
