"""`pipeline notebook <comp> DIR`: what a code competition's Kaggle notebook needs to reproduce the local
submission offline, as two folders: `DIR/dataset/` (the networks the ensemble weighs, its choice and calibration,
the record, the params prediction reads, this project as a wheel) and `DIR/kernel/` (kernel-metadata.json with the
internet off, and the script). `pipeline submit <comp>` publishes both; `kaggle datasets create -p DIR/dataset
--dir-mode zip` and `kaggle kernels push -p DIR/kernel` do it by hand (docs/kaggle.md).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.competitions import get_competition
from pipeline.core.config import as_dict, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.gitinfo import provenance
from pipeline.core.io import read_json
from pipeline.core.paths import Paths
from pipeline.kernel.bundle import DATASET_LIMIT_BYTES, owner_name, write_dataset, write_kernel

STAGES = ("head", "finetune")


class NotebookRefused(PipelineError):
    """The run's outputs cannot make a notebook that reproduces its submission."""


def bundle_files(params, comp_name: str, root: Path, choice: dict, folds: list[int]) -> tuple[dict, dict]:
    """Every model the ensemble weighs: its resolved params, and its files (bundle name -> source): the backbone
    when its heads are weighed, and each fold's head or finetuned network."""
    models, files = {}, {}
    for model in params.models:
        used = [s for s in STAGES if choice["weights"].get(f"{model}/{s}", 0) > 0]
        if not used:
            continue
        paths = Paths(comp_name, root, model)
        models[model] = params.model(comp_name, model).model_dump(mode="json")
        files[f"{model}/meta.json"] = paths.features / "meta.json"
        if "head" in used:
            files[f"{model}/backbone.safetensors"] = paths.features / "backbone.safetensors"
        for stage in used:
            name = "head.safetensors" if stage == "head" else "model.safetensors"
            files.update({f"{model}/{stage}/fold{k}.safetensors": paths.fold_model(stage, k) / name for k in folds})
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise NotebookRefused(f"{len(missing)} trained file(s) are missing (e.g. {missing[0]}); run `dvc repro "
                              f"ensemble@{comp_name}` (or `dvc checkout`) first.")
    return models, files


def run(comp_name: str, out: Path, owner: str | None = None, wheels: list[Path] = (), root: Path = Path("."),
        limit: int = DATASET_LIMIT_BYTES) -> dict:
    comp = get_competition(comp_name)
    if comp.submit != "notebook":
        raise NotebookRefused(f"{comp.title} takes a CSV upload ({comp_name}'s record says submit: {comp.submit}), "
                              f"not a notebook: `pipeline submit {comp_name}` uploads "
                              f"submissions/{comp_name}/submission.csv.")
    params = load_params(Path(root) / "params.yaml")
    cp = params.comp(comp_name)
    if params.quick:
        raise NotebookRefused(f"params.yaml asks for a quick run (folds {list(params.folds)} of {params.fold_count}, "
                              f"subsample {params.subsample}); a notebook ships every fold's networks: restore the "
                              "full folds and subsample 1.0, run `dvc repro`, then pipeline notebook.")
    if cp.ensemble.neighbours:
        raise NotebookRefused(f"{comp_name}.ensemble.neighbours smooths over the whole test set's features, which "
                              f"the notebook does not reproduce; set it to 0 and run `dvc repro ensemble@{comp_name}`.")
    paths = Paths(comp_name, root)
    if not paths.cv.is_file() or "choice" not in read_json(paths.cv):
        raise NotebookRefused(f"{paths.cv} is missing or older than this version (no 'choice'); run `dvc repro "
                              f"ensemble@{comp_name}` first.")
    cv = read_json(paths.cv)
    folds = list(cv["run"]["folds"])
    if folds != list(params.folds):
        raise NotebookRefused(f"{paths.cv} was made with folds {folds}, params.yaml lists {list(params.folds)}; run "
                              f"`dvc repro ensemble@{comp_name}` first.")
    models, files = bundle_files(params, comp_name, Path(root), cv["choice"], folds)
    commit, _ = provenance(Path(root))
    metrics = read_json(paths.metrics)
    owner = owner_name(owner)
    manifest = {"competition": comp_name, "commit": commit,
                "folds": folds, "choice": cv["choice"], "models": models, "prepare": as_dict(cp.prepare),
                "speed": as_dict(cp.speed), "cv": {k: metrics.get(k) for k in ("logloss", "accuracy", comp.metric)}}
    out = Path(out)
    size = write_dataset(out / "dataset", comp, manifest, files, owner, [Path(w) for w in wheels], limit)
    script = write_kernel(out / "kernel", comp, owner, commit, metrics)
    return {"dataset": out / "dataset", "kernel": out / "kernel", "script": script, "bytes": size,
            "members": [m for m, w in cv["choice"]["weights"].items() if w > 0], "folds": folds, "owner": owner}


def describe(result: dict) -> str:
    return (f"Notebook for {len(result['members'])} member(s) ({', '.join(result['members'])}) x {len(result['folds'])} "
            f"folds: dataset {result['dataset']} ({result['bytes'] / 2**20:.1f} MiB, owner {result['owner']}), kernel "
            f"{result['script']}. `pipeline submit` publishes both, or by hand: kaggle datasets create -p "
            f"{result['dataset']} --dir-mode zip; kaggle kernels push -p {result['kernel']}")
