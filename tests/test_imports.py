"""Imports run one way: no cycle between the package's files, nor between its top-level units (subpackages and
top-level modules), counting imports inside functions too (read from the AST, nothing is imported)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "harness"


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package (a package is its __init__)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file; a package's own re-exports of its children
    (child -> parent edges) are left out, as they are not a dependency of design."""
    modules = module_files(package)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in map(resolve, targets):
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def unit(module: str) -> str:
    """harness.metrics.fid -> harness.metrics; harness.cli -> harness.cli."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_files():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_cycle_between_top_level_units():
    units: dict[str, set[str]] = defaultdict(set)
    for module, targets in import_graph(PACKAGE).items():
        units[unit(module)] |= {unit(t) for t in targets if unit(t) != unit(module)}
    assert cycles(units) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The check itself can fail: a two-file package importing each other (one import inside a function)."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.sub.b"]]
