"""dvc.yaml stays in sync with the code: each stage depends on the modules it imports and lists exactly the
params sections it reads, so DVC re-runs a stage when, and only when, something it uses changes."""

import ast

import pytest
import yaml

from conftest import REPO
from pipeline.core.config import RESOLVED_FROM, TOP_KEYS
from pipeline.core.sections import CompetitionParams

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SECTIONS = set(CompetitionParams.model_fields)
UNTRACKED = {"models", "speed"}  # models: per model, below; speed changes no result, so no stage lists it


def _imports(module: str) -> set[str]:
    """The pipeline modules `module` (dotted below pipeline/, e.g. stages.head) imports, dotted the same way."""
    tree = ast.parse((REPO / "pipeline" / f"{module.replace('.', '/')}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            base = node.module.partition(".")[2]
            for alias in node.names:  # `from pipeline.stages import head` imports a module; `import X` a name
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if (REPO / "pipeline" / f"{sub.replace('.', '/')}.py").exists() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("pipeline.")}
    return found - {""}


def imported_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m))
    return seen


def _is_comp_call(node, method: str = "comp") -> bool:
    """`params.comp(...)` (or `params.model(...)`): the ways a stage gets a competition's (or a model's) params."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "params")


def _calls(module: str, name: str) -> bool:
    tree = ast.parse((REPO / "pipeline" / f"{module.replace('.', '/')}.py").read_text())
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
               for n in ast.walk(tree))


LIBRARY_READERS = {"load_start": "training.inference"}
"""Library functions that take `params` and read competition sections themselves: a stage whose code calls one
(directly or through a module it imports, like the report's model figures) reads what the function reads."""


def params_read_with_library(stage: str, per_model: bool) -> set[str]:
    read = params_read(f"stages.{stage}", per_model)
    for function, module in LIBRARY_READERS.items():
        if any(_calls(m, function) for m in imported_closure(f"stages.{stage}") if m != module):
            read |= params_read(module, per_model) - {"device"}
    return read


def params_read(module: str, per_model: bool = True) -> set[str]:
    """Params a stage module reads: top-level keys on `params`, and `<comp>.<section>` for each section taken
    from `params.comp(...)` or `params.model(...)` directly or from a name bound to it (an attribute that merely
    shares a section's name, like `model.head`, does not count). A model's params also read its overrides:
    `<comp>.models.<model>` in a per-model stage, all of `<comp>.models` in a stage that reads every model."""
    tree = ast.parse((REPO / "pipeline" / f"{module.replace('.', '/')}.py").read_text())
    bound = {method: {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                      and _is_comp_call(node.value, method) for t in node.targets if isinstance(t, ast.Name)}
             for method in ("comp", "model")}
    read = set()
    if any(_is_comp_call(node, "model") for node in ast.walk(tree)):
        read.add("${item.comp}.models.${item.model}" if per_model else "${item.comp}.models")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        on = {method: _is_comp_call(node.value, method) or (isinstance(node.value, ast.Name)
                                                           and node.value.id in bound[method])
              for method in ("comp", "model")}
        if node.attr in SECTIONS - UNTRACKED and (on["comp"] or on["model"]):
            read.add(f"${{item.comp}}.{node.attr}")
        elif node.attr == "seed" and on["model"]:  # a model's seed defaults to the top-level one
            read.add("seed")
        elif node.attr in TOP_KEYS and isinstance(node.value, ast.Name) and node.value.id == "params":
            read.add(node.attr)
    # a section whose values config.py resolves from another (prepare's size from data.source) reads that one too
    read |= {f"${{item.comp}}.{RESOLVED_FROM[s]}" for s in RESOLVED_FROM if f"${{item.comp}}.{s}" in read}
    return read


def test_no_stage_lists_the_speed_settings():
    """Workers, the features' batch size and compile change no result: changing one must re-run nothing."""
    assert not [(stage, p) for stage, spec in DVC.items() for p in spec.get("params", []) if "speed" in p]
    assert "${item.comp}.speed" not in params_read("stages.finetune")


def test_a_stage_reading_the_cache_size_lists_what_picks_it():
    """prepare.image_size is the real archive's or, while data.source is demo, data.demo.image_size: a change of
    either re-runs the stages that read it (download's output alone would not: the demo archive is the same)."""
    assert "${item.comp}.data" in params_read("stages.prepare")
    assert "${item.comp}.data" in DVC["prepare"]["params"]


def test_params_read_ignores_attributes_that_only_share_a_sections_name():
    assert "${item.comp}.head" not in params_read("training.models")  # models.py has `model.head`-like attributes
    assert "${item.comp}.head" in params_read("stages.head")


def test_the_folders_show_the_architecture():
    """pipeline/stages/ holds the DVC stages (and inprocess.py, which runs them in one process), and nothing else;
    package __init__ files stay empty (importing a module imports them, and no stage lists them as deps)."""
    stages = {p.stem for p in (REPO / "pipeline" / "stages").glob("*.py")} - {"__init__", "inprocess"}
    assert stages == set(DVC)
    assert not [p for p in (REPO / "pipeline").rglob("__init__.py") if p.read_text().strip()]


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_runs_its_own_module(stage):
    matrix = DVC[stage].get("matrix", {})
    args = "".join(f" ${{item.{key}}}" for key in ("comp", "model", "fold") if key in matrix)
    assert list(matrix) == [key for key in ("comp", "model", "fold") if key in matrix]
    launcher = "${launch}" if stage == "finetune" else "python"  # params.yaml's launch: python or torchrun ...
    assert DVC[stage]["cmd"] == f"{launcher} -m pipeline.stages.{stage}{args}"


@pytest.mark.parametrize("stage", sorted(DVC))
def test_code_deps_are_the_modules_the_stage_imports(stage):
    declared = {d for d in DVC[stage]["deps"] if d.startswith("pipeline/") and d.endswith(".py")}
    assert declared == {f"pipeline/{m.replace('.', '/')}.py" for m in imported_closure(f"stages.{stage}")}


@pytest.mark.parametrize("stage", sorted(DVC))
def test_a_competitions_stages_depend_on_its_own_record_only(stage):
    """Competition facts are data: each stage of a competition lists pipeline/competitions/<comp>.yaml, and no stage
    the folder or another record, so adding or editing a record re-runs that competition's stages only."""
    records = [d for d in DVC[stage]["deps"] if d.startswith("pipeline/competitions")]
    assert records == (["pipeline/competitions/${item.comp}.yaml"] if "comp" in DVC[stage].get("matrix", {}) else [])


@pytest.mark.parametrize("stage", sorted(DVC))
def test_params_are_the_sections_the_stage_reads(stage):
    """A stage over every competition cannot list their sections (dvc.yaml has no loop outside a matrix), so one
    that reads them must run every time: the sections it lists are then the top-level ones it reads."""
    per_model = "model" in DVC[stage].get("matrix", {})
    read = params_read_with_library(stage, per_model)
    if "comp" not in DVC[stage].get("matrix", {}):
        per_comp = {p for p in read if p.startswith("${item.comp}")}
        assert not per_comp or DVC[stage].get("always_changed"), (stage, per_comp)
        read -= per_comp
    assert set(DVC[stage].get("params", [])) == read


def test_every_per_fold_or_per_model_stage_writes_its_own_outputs():
    for stage, spec in DVC.items():
        for key in ("model", "fold"):
            per = key in spec.get("matrix", {})
            for out in spec.get("outs", []):
                name = out if isinstance(out, str) else next(iter(out))
                assert (f"${{item.{key}}}" in name) == per, (stage, name)


def test_the_committed_lock_holds_exactly_the_pipelines_stages():
    """DVC keeps a removed stage's entry in dvc.lock; a stale one misleads `dvc status` readers and diffs."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        names = {stage.addressing for stage in repo.index.stages}
    assert set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]) == names
