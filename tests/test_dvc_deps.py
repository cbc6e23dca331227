"""Every DVC stage lists in dvc.yaml each project source file its code can import, and no other;
the server's and the commands' own code is in none of them.

Otherwise a change to a file a stage runs leaves `dvc repro` calling stale outputs up to date, and
a change to code no stage runs re-runs the pipeline for nothing. The imports
are read from the source (function-local ones included; an `if TYPE_CHECKING:` block never
runs, so its imports do not count), following from the stage's
`python3 -m pipeline.<stage>` through the functions and classes it names, so a stage is held to
the code it can run, not to every module its helpers' modules mention.
"""

from __future__ import annotations

import ast
import inspect
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tinyllm", "pipeline")
# Imported by every stage but unable to change what a stage writes; listing them would re-run
# the whole pipeline for a reworded message.
NEUTRAL = {
    "pipeline/__init__.py": "picks the interpreter the stage runs under",
    "tinyllm/__init__.py": "the package's version string and public names",
    "tinyllm/errors.py": "how errors are printed",
    "tinyllm/logs.py": "how log lines look",
    # tinyllm's subpackages (training, tracking, ...): each __init__ is its docstring alone
    **{str(p.relative_to(ROOT)): "a part's docstring" for p in ROOT.glob("tinyllm/*/__init__.py")},
}
# Source files a stage reads as files rather than imports.
READ_AS_FILES = {"evaluate": {"tinyllm/tracking/pyfunc.py"}}  # logged as the MLflow Model's code
# Code that only the commands run: no stage may depend on it, or editing it (a server cap, a
# `tinyllm restore` message) would re-run the pipeline, training included. tinyllm/serving/ too.
COMMAND_ONLY = {"tinyllm/__main__.py", "tinyllm/cli.py", "tinyllm/chat.py", "tinyllm/bench.py",
                "tinyllm/adhoc_training.py", "tinyllm/restore.py"}
Unit = tuple[str, str | None]  # (module, top-level function or class; None: module level)


def module_file(module: str) -> Path | None:
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def type_checking_only(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING", "typing.TYPE_CHECKING")


@cache
def parsed(module: str) -> tuple[dict[str, ast.AST], list[ast.stmt], dict[str, Unit]]:
    """A module's top-level definitions, its other top-level statements, and what each name
    bound by an import anywhere in it refers to: a module, or a name in one."""
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    tree.body = [node for node in tree.body if not type_checking_only(node)]
    definitions = {node.name: node for node in tree.body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    top = [node for node in tree.body if node not in definitions.values()]
    bindings: dict[str, Unit] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = (alias.name, None)
                else:
                    bindings[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                bindings[alias.asname or alias.name] = (
                    (submodule, None) if module_file(submodule) else (node.module, alias.name))
    return definitions, top, bindings


def imported_modules(node: ast.AST) -> set[str]:
    """Modules an import statement runs, parent packages included."""
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    parts = {".".join(name.split(".")[:i + 1]) for name in names
             for i in range(len(name.split(".")))}
    return {name for name in parts if module_file(name)}


def reached_units(unit: Unit) -> set[Unit]:
    """The units one unit's code imports or names."""
    module, name = unit
    definitions, top, bindings = parsed(module)
    nodes = top if name is None else [definitions[name]]
    found: set[Unit] = set()
    for statement in nodes:
        for node in ast.walk(statement):
            found |= {(m, None) for m in imported_modules(node)}
            if isinstance(node, ast.ImportFrom) and module_file(node.module or ""):
                found |= {(node.module, a.name) for a in node.names
                          if a.name in parsed(node.module)[0]}
            if isinstance(node, ast.Name):
                if node.id in definitions:
                    found.add((module, node.id))
                elif node.id in bindings and module_file(bindings[node.id][0]):
                    found.add(bindings[node.id])
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                target = bindings.get(node.value.id)
                if target and target[1] is None and module_file(target[0]):
                    inner = f"{target[0]}.{node.attr}"
                    if module_file(inner):
                        found.add((inner, None))
                    elif node.attr in parsed(target[0])[0]:
                        found.add((target[0], node.attr))
    found = {(m, n) for m, n in found if n is None or n in parsed(m)[0]}
    return found | {(m, None) for m, _ in found}


def stage_code(module: str) -> set[str]:
    """Project files (relative to the root) that running `python -m module` can import."""
    seen: set[Unit] = set()
    todo: list[Unit] = [(module, None), *((m, None) for m in imported_modules(
        ast.parse(f"import {module}").body[0]))]
    while todo:
        unit = todo.pop()
        if unit not in seen:
            seen.add(unit)
            todo.extend(reached_units(unit) - seen)
    return {str(module_file(m).relative_to(ROOT)) for m, _ in seen}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: str) -> str:
    return STAGES[stage]["cmd"].split(" -m ")[1].split()[0]


def stage_files(stage: str) -> set[str]:
    """Every file a stage's `dvc status` looks at: its listed deps and the code it can import."""
    return {str(d) for d in STAGES[stage]["deps"]} | stage_code(stage_module(stage))


def source_of(thing) -> str:
    return str(Path(inspect.getsourcefile(thing)).relative_to(ROOT))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_project_file_a_stage_can_import_is_one_of_its_dvc_deps(stage):
    spec = STAGES[stage]
    deps = {str(d) for d in spec["deps"]}
    needed = stage_code(stage_module(stage)) - set(NEUTRAL) | READ_AS_FILES.get(stage, set())
    assert not sorted(needed - deps), (
        f"dvc.yaml stage {stage} runs {sorted(needed - deps)} but does not list them in deps")
    listed_code = {d for d in deps if d.endswith(".py")}
    assert all((ROOT / d).is_file() for d in listed_code), "a listed source file is gone"
    assert not sorted(listed_code - needed - set(NEUTRAL)), (
        f"dvc.yaml stage {stage} lists code it never imports: "
        f"{sorted(listed_code - needed - set(NEUTRAL))}")


def test_the_walk_sees_function_local_imports():
    """workflow.train imports the trainer inside the function: it must count for train only."""
    assert "tinyllm/training/loop.py" in stage_code("pipeline.train")
    assert "tinyllm/training/loop.py" not in stage_code("pipeline.prepare")


def test_a_subpackage_init_is_only_its_docstring():
    """What makes the subpackages' __init__ files NEUTRAL: no code a stage could run."""
    inits = sorted(ROOT.glob("tinyllm/*/__init__.py"))
    assert len(inits) >= 4
    for init in inits:
        body = ast.parse(init.read_text(encoding="utf-8")).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init} holds code"


def test_the_walk_skips_imports_that_only_type_checkers_run():
    """training/outputs.py names the trainer for type hints only: evaluate reads its file names
    without depending on the loop."""
    assert "tinyllm/training/outputs.py" in stage_code("pipeline.evaluate")
    assert "tinyllm/training/loop.py" not in stage_code("pipeline.evaluate")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_depends_on_the_server_or_on_command_only_code(stage):
    serving = {str(p.relative_to(ROOT)) for p in ROOT.glob("tinyllm/serving/*.py")}
    assert len(serving) > 5 and all((ROOT / path).is_file() for path in COMMAND_ONLY)
    assert not sorted(stage_files(stage) & (serving | COMMAND_ONLY))


def test_editing_a_server_cap_or_a_restore_message_reruns_no_stage():
    """The files that define the server's caps, `tinyllm restore` and `tinyllm train`'s own
    assembly are in no stage's deps: editing them leaves `dvc status` clean."""
    from tinyllm.adhoc_training import adhoc_params
    from tinyllm.restore import restore
    from tinyllm.serving.limits import Limits

    homes = {source_of(restore), source_of(Limits), source_of(adhoc_params)}
    for stage in STAGES:
        assert not sorted(stage_files(stage) & homes), stage
