"""Every third-party package tinyllm's code imports is declared in pyproject.toml.

A package that only arrives through another's dependencies (pandas through MLflow, say) may stop
arriving when that one changes; declared, it stays installed and its range is ours to choose.
"""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def imported_top_level(directories: tuple[str, ...]) -> set[str]:
    names = set()
    for directory in directories:
        for path in (ROOT / directory).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def test_every_imported_third_party_package_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {Requirement(r).name.lower() for r in project["dependencies"]}
    third_party = imported_top_level(("tinyllm", "pipeline")) - set(sys.stdlib_module_names) - {
        "tinyllm", "pipeline", "__future__"}
    distributions = packages_distributions()
    undeclared = {name: distributions.get(name) for name in third_party
                  if not {d.lower() for d in distributions.get(name, [name])} & declared}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
