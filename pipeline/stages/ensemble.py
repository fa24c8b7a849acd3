"""Stage `ensemble@<comp>`: every model's fold predictions (head and finetune) -> `submissions/<comp>/`.

Members are `<model>/<stage>` for each of params.yaml's `models`; a member's test prediction is its folds'
average in log space, optionally smoothed over test neighbours (`pipeline.scoring.neighbours`). How they combine and
their calibration are chosen per fold on the other folds (`pipeline.scoring.choosing`,
`pipeline.scoring.calibration`), so the reported `logloss` is honest; the submission uses the choice made on every
row. Outputs:
- `submissions/<comp>/submission.csv`, checked against sample_submission.csv (a quick run checks it, writes none);
- `submissions/<comp>/oof.csv`, the cross-fitted out-of-fold predictions with each row's group and fold (the
  report reads them);
- `metrics/<comp>.json`, a few numbers committed to git: the CV log loss, accuracy and metric; on demo data
  `demo_test`, the metric on the demo's secret test labels (what Kaggle would say); a quick run's `quick`;
- `metrics/<comp>/cv.json`: what was chosen, the source, each fold's and each group's cross-fitted score (which
  `pipeline compare` pairs between runs) and the machines the members were computed on. Each member's own
  out-of-fold score (`members_logloss`, and per fold `<member>_logloss`) is of its predictions as its stage wrote
  them, before any neighbour smoothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.competitions import Competition, get_competition
from pipeline.core.config import Params
from pipeline.core.io import file_md5, read_json, write_csv, write_json
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.data.cache import load_cache
from pipeline.data.outputs import environments, load_oof, load_test, train_rows
from pipeline.scoring.choosing import KINDS, choose_all, cross_fitted, evaluate, log_average
from pipeline.scoring.metrics import metric, scores
from pipeline.scoring.neighbours import smooth_members
from pipeline.scoring.submission import (
    FLOAT_FORMAT,
    decide,
    make_submission,
    read_sample,
    score_answers,
    validate_submission,
)

STAGES = ("head", "finetune")


def _rounded(d: dict) -> dict:
    """Scores to 6 decimals: the committed metrics files then diff cleanly between runs. A score that does not
    exist on these rows (ROC AUC of rows of one class) is null: JSON has no NaN."""
    return {k: (None if v != v else round(v, 6)) if isinstance(v, float) else v for k, v in d.items()}


def per_fold(comp: Competition, folds: list[int], ids: np.ndarray, honest: np.ndarray, labels: np.ndarray,
             fold_of: np.ndarray, choices: dict, members: dict[str, np.ndarray]) -> dict:
    """Each fold's cross-fitted ensemble score and choice, beside each member's own score (`<model>/<stage>_...`),
    and a hash of its rows' ids: two runs' fold scores are paired only when their folds hold the same rows."""
    out = {}
    for k in folds:
        rows = fold_of == k
        rows_md5 = hashlib.md5("\n".join(sorted(map(str, ids[rows]))).encode()).hexdigest()
        own = {f"{member}_{m}": v for member, p in members.items() for m, v in scores(p[rows], labels[rows]).items()
               if m in ("logloss", "accuracy")}
        held = evaluate(comp, honest[rows], labels[rows], choices[str(k)].threshold)
        out[str(k)] = {**_rounded({**held, "rows": int(rows.sum()),
                                   "rows_md5": rows_md5, "choice": str(choices[str(k)]),
                                   "weights": _rounded(choices[str(k)].weights), **own}),
                       "threshold": choices[str(k)].threshold}  # exact: it reproduces the fold's decisions
    return out


def per_group(comp: Competition, groups: np.ndarray, honest: np.ndarray, labels: np.ndarray, fold_of: np.ndarray,
              choices: dict) -> dict:
    """Each group's (State Farm: driver's) cross-fitted score: which drivers are hard, and whether a change
    helps on most of them or on one."""
    return {
        str(g): _rounded({**evaluate(comp, honest[rows], labels[rows], choices[str(fold_of[rows][0])].threshold),
                          "rows": int(rows.sum()),
                          "fold": int(fold_of[rows][0])})
        for g in sorted(set(groups)) for rows in [groups == g]
    }


def run(params: Params, comp_name: str, root: Path = Path(".")) -> dict:
    comp = get_competition(comp_name)
    ep = params.comp(comp_name).ensemble
    paths = Paths(comp_name, root, params.models[0])
    ids, labels, fold_of = train_rows(paths, comp)
    kept = np.isin(fold_of, params.folds)  # quick mode scores fewer folds: their rows only
    ids, labels, fold_of = ids[kept], labels[kept], fold_of[kept]
    oof, test, read = {}, {}, {}
    for model in params.models:  # every model's fold predictions are members, named <model>/<stage>
        for stage in STAGES:
            dirs = [paths.of(model).fold_model(stage, k) for k in params.folds]
            oof[f"{model}/{stage}"] = load_oof(comp, dirs, ids)
            read.update({str((d / "oof.csv").relative_to(root)): file_md5(d / "oof.csv") for d in dirs})
            test[f"{model}/{stage}"] = log_average(load_test(dirs))
    own = dict(oof)
    if ep.neighbours:  # fixed k and weight: nothing is chosen on the rows they are scored on
        smooth_members(oof, test, paths, fold_of, ep.neighbours, ep.neighbour_weight, kept)
    kinds = KINDS if ep.members == "auto" else (ep.members,)
    # calibration serves log loss only: a metric of labels or of ranks is blind to it
    methods = (("none", "temperature", "clip") if ep.calibration == "auto" and comp.metric == "logloss"
               else ("none",) if ep.calibration == "auto" else (ep.calibration,))
    if len(params.folds) == 1:  # no other fold to choose or fit on: the finetuned networks as they are
        kinds, methods = ("finetune",), ("none",)

    _, train_index = load_cache(paths.cache, "train")
    groups = train_index["group"].astype(str).to_numpy()[kept]
    units = groups if comp.group_column else None  # drivers: the choice's standard errors are over them
    honest, fold_choices = cross_fitted(comp, oof, labels, fold_of, kinds, methods, units)
    final_choice = choose_all(comp, oof, labels, fold_of, kinds, methods, units)  # for the submission: every row

    _, test_index = load_cache(paths.cache, "test")
    sample = read_sample(comp, paths.raw)
    final = final_choice.apply(test)
    sub = make_submission(comp, test_index["id"], final, final_choice.threshold)
    validate_submission(comp, sub, sample, str(paths.submission))
    if params.quick:  # its models saw part of the data: no file a hand upload could send (DVC empties the folder;
        paths.submission.unlink(missing_ok=True)  # run by hand, an earlier full run's file goes too)
    else:
        write_csv(paths.submission, sub, float_format=FLOAT_FORMAT)
    for old in (paths.root / "submissions" / f"{comp_name}.csv", paths.root / "submissions" / f"{comp_name}_oof.csv"):
        old.unlink(missing_ok=True)  # the layout before submissions/<comp>/: DVC no longer tracks them
    # Top level: a few flat keys, small enough to commit, so `dvc metrics diff main` works in any clone. The
    # honest rows' labels are decided by each fold's own threshold.
    predicted = np.empty(len(labels), dtype=int)
    for k, c in fold_choices.items():
        predicted[fold_of == int(k)] = decide(honest[fold_of == int(k)], c.threshold)
    metrics = {**scores(honest, labels), "accuracy": metric("accuracy", honest, labels, predicted),
               comp.metric: metric(comp.metric, honest, labels, predicted)}
    demo_test = {}
    if paths.demo_answers.is_file():  # the demo knows its test labels: report the "leaderboard" score too
        answers = pd.read_csv(paths.demo_answers, dtype=str, keep_default_na=False).set_index("id")["label"]
        local = score_answers(comp, sub, answers)  # what Kaggle would score: the values (or labels) in the file
        demo_test = {key: local[key] for key in ("logloss", "accuracy", comp.metric) if key in local}
    # Only numbers worth diffing, and a quick run's mark: `dvc metrics show` stays within a terminal. What was
    # chosen, the source and the demo test's other scores are in cv.json.
    quick = {"quick": quick_label(params)} if params.quick else {}
    metrics = _rounded({**metrics, **({"demo_test": demo_test[comp.metric]} if demo_test else {}), **quick})
    detail = {
        "run": {"folds": list(params.folds), "fold_count": params.fold_count, "subsample": params.subsample},
        "metric": comp.metric,
        "source": shown_source(read_json(paths.raw / "summary.json")["source"]),
        **quick,
        "test_rows": len(sub),
        "demo_test": _rounded(demo_test),
        "logloss": metrics["logloss"],
        "calibration_value": final_choice.value,
        "choice": dataclasses.asdict(final_choice),  # exact (unrounded): a code competition's notebook applies it
        "weights": _rounded(final_choice.weights),
        "members_logloss": _rounded({m: scores(p, labels)["logloss"] for m, p in own.items()}),
        "threshold": final_choice.threshold,
        "environments": environments(paths, params.models, params.folds, STAGES),
        "folds": per_fold(comp, list(params.folds), ids, honest, labels, fold_of, fold_choices, own),
        "groups": per_group(comp, groups, honest, labels, fold_of, fold_choices) if comp.group_column else {},
        "inputs_md5": read,  # the fold predictions these scores came from: the summary tells a stale score by them
    }
    # The cross-fitted out-of-fold predictions themselves, for the report's confusion matrix and image grids.
    oof_df = pd.DataFrame(honest, columns=list(comp.classes))
    oof_df.insert(0, "fold", fold_of)
    oof_df.insert(0, "group", groups)
    oof_df.insert(0, "predicted", np.asarray(comp.classes)[predicted])  # as decided for the metric (threshold)
    oof_df.insert(0, "label", np.asarray(comp.classes)[labels])
    oof_df.insert(0, "id", ids)
    write_csv(paths.oof, oof_df)
    write_json(paths.cv, detail)
    write_json(paths.metrics, metrics)
    return {**metrics, **detail}


def shown_source(source: str) -> str:
    """`demo`, `kaggle`, or the archive's file name: what a reader of the metrics needs (`pipeline submit` refuses
    `demo`). A zip's folder says nothing more and would widen `dvc metrics show` past a terminal."""
    return Path(source).name


def quick_label(params: Params) -> str:
    """What a quick run scored, in params' words and short (metrics' `quick`, `pipeline compare`, `pipeline
    submit`): `dvc metrics show` prints it in a column."""
    share = "" if params.subsample == 1.0 else f", subsample {params.subsample:g}"
    return f"folds {list(params.folds)} of {params.fold_count}{share}"


def summary(result: dict) -> str:
    name, test = result["metric"], result["demo_test"]
    demo = "".join(f"; demo test {key} {test[key]:.4f}" for key in dict.fromkeys(("logloss", name)) if key in test)
    extra = f", {name} {result[name]:.4f}" if name not in ("logloss", "accuracy") else ""
    quick = f"; QUICK: {result['quick']}, no submission written" if "quick" in result else ""
    choice = result["choice"]
    return (f"CV log loss {result['logloss']:.4f}, accuracy {result['accuracy']:.4f}{extra} ({choice['kind']}, "
            f"{choice['method']}){demo}{quick}")


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=summary,
               wrote=lambda comp, model, fold: [p for p in (Paths(comp).submission, Paths(comp).oof,
                                                            Paths(comp).metrics, Paths(comp).cv) if p.is_file()])


if __name__ == "__main__":
    main()
