"""dvc.yaml stays in sync with the code: each stage depends on the modules it imports and lists exactly the
params sections it reads, so DVC re-runs a stage when, and only when, something it uses changes."""

import ast
import dataclasses
import re

import pytest
import yaml

from conftest import REPO
from pipeline.config import TOP_KEYS, CompetitionParams

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SECTIONS = {f.name for f in dataclasses.fields(CompetitionParams)}


def _imports(module: str) -> set[str]:
    tree = ast.parse((REPO / "pipeline" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return found


def imported_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m))
    return seen


def params_read(module: str) -> set[str]:
    """Params a stage module reads: top-level keys, and `<comp>.<section>` for each section attribute."""
    tree = ast.parse((REPO / "pipeline" / f"{module}.py").read_text())
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            on_paths = isinstance(node.value, ast.Name) and node.value.id == "paths"  # Paths.features is a folder
            if node.attr in SECTIONS and not on_paths:
                read.add(f"${{item.comp}}.{node.attr}")
            elif node.attr in TOP_KEYS and isinstance(node.value, ast.Name) and node.value.id == "params":
                read.add(node.attr)
            elif node.attr == "n_splits":
                read.add("folds")
    return read


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_runs_its_own_module(stage):
    assert re.fullmatch(rf"python -m pipeline\.{stage} \$\{{item\.comp\}}( \$\{{item\.fold\}})?", DVC[stage]["cmd"])


@pytest.mark.parametrize("stage", sorted(DVC))
def test_code_deps_are_the_modules_the_stage_imports(stage):
    declared = {d for d in DVC[stage]["deps"] if d.startswith("pipeline/")}
    assert declared == {f"pipeline/{m}.py" for m in imported_closure(stage)}


@pytest.mark.parametrize("stage", sorted(DVC))
def test_params_are_the_sections_the_stage_reads(stage):
    assert set(DVC[stage]["params"]) == params_read(stage)


def test_every_per_fold_stage_writes_per_fold_outputs():
    for stage, spec in DVC.items():
        per_fold = "fold" in spec["matrix"]
        for out in spec.get("outs", []):
            name = out if isinstance(out, str) else next(iter(out))
            assert ("${item.fold}" in name) == per_fold, (stage, name)
