"""No import cycle inside tinyllm: every module's imports (at the top, in functions, for type
hints alike) form a graph without loops, so each part can be read and tested on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import tinyllm

PACKAGE = Path(tinyllm.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The tinyllm modules a file imports: `from tinyllm import x` names x when x is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                      else node.module for a in node.names}
    return found & modules


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of the graph (its modules in import order, the first again at the end)."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            if cycle := visit(target, [*path, name]):
                return cycle
        done.add(name)
        return None

    return next(filter(None, (visit(name, []) for name in sorted(graph))), None)


def test_tinyllm_has_no_import_cycle():
    graph = import_graph()
    assert "tinyllm.training.loop" in graph and "tinyllm.config" in graph["tinyllm.training.loop"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_loop_through_the_package_itself():
    graph = {"tinyllm": {"tinyllm.tracking.discovery"},
             "tinyllm.tracking.discovery": {"tinyllm.package"},
             "tinyllm.package": {"tinyllm"}, "tinyllm.io": set()}
    assert find_cycle(graph) == ["tinyllm", "tinyllm.tracking.discovery", "tinyllm.package",
                                 "tinyllm"]
