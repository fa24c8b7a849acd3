"""Stage `ensemble@<comp>`: every model's fold predictions (head and finetune) -> `submissions/<comp>.csv`.

Members are `<model>/<stage>` for each of params.yaml's `models`; a member's test prediction is its folds'
average in log space. Out-of-fold predictions choose how members combine (`ensemble.members`: every head,
every finetuned network, both equally, or non-negative weights summing to 1 fitted to minimise log loss, all in
log space) and fit a log-loss calibration (a temperature, or a clip like the course's [0.05, 0.95] but fitted).
The kind and calibration are chosen by cross-validation over the rows they are fitted on, so fitted weights do
not win by fitting, and of those within one standard error of the best the one that departs least from the
finetuned networks uncalibrated. The reported `logloss` is honest: each fold's rows get the kind, weights and
calibration chosen and fitted on the other folds only. Outputs: the submission (checked against
sample_submission.csv); `metrics/<comp>.json`, a few flat keys committed to git (on demo data also `demo_test_*`,
the score on the demo's secret test labels: what Kaggle would say); and `metrics/<comp>/cv.json`, each fold's and
each group's cross-fitted score, which `pipeline compare` pairs between runs; and the cross-fitted out-of-fold
predictions in `submissions/<comp>_oof.csv` (with each row's group and fold), which the report reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar

from pipeline.competitions import Competition, get_competition
from pipeline.config import Params
from pipeline.cache import encode_labels, load_cache
from pipeline.io import read_json, write_csv, write_json
from pipeline.outputs import environments, load_oof, load_test, train_rows
from pipeline.paths import Paths
from pipeline.scoring import KAGGLE_EPS, metric, row_losses, scores
from pipeline.stage import stage_main
from pipeline.submission import (FLOAT_FORMAT, decide, make_submission, read_sample, submission_probs,
                                 validate_submission)

STAGES = ("head", "finetune")


def with_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    z = np.log(np.clip(probs, KAGGLE_EPS, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def with_clip(probs: np.ndarray, eps: float) -> np.ndarray:
    """Clip each row to [eps / (C - 1), 1 - eps] and renormalise (the course's clip, for any class count)."""
    c = probs.shape[1]
    p = np.clip(probs, eps / (c - 1), 1 - eps)
    return p / p.sum(axis=1, keepdims=True)


def fit_calibration(method: str, probs: np.ndarray, labels: np.ndarray) -> float | None:
    """The temperature or clip minimising log loss on (probs, labels); None for 'none'."""
    if method == "temperature":
        # Sharpen at most 2x: only near-perfect out-of-fold predictions ask for more, and then the test set's
        # rare confident miss pays for it (demo Dogs vs Cats: T 0.05 turned 2 misses in 50 into log loss 0.39).
        res = minimize_scalar(lambda lt: scores(with_temperature(probs, np.exp(lt)), labels)["logloss"],
                              bounds=(np.log(0.5), np.log(20.0)), method="bounded")
        return float(np.exp(res.x))
    if method == "clip":
        grid = np.geomspace(1e-5, 0.3, 60)
        losses = [scores(with_clip(probs, e), labels)["logloss"] for e in grid]
        return float(grid[int(np.argmin(losses))])
    return None


def calibrate(method: str, value: float | None, probs: np.ndarray) -> np.ndarray:
    if method == "temperature":
        return with_temperature(probs, value)
    if method == "clip":
        return with_clip(probs, value)
    return probs


KINDS = ("head", "finetune", "both", "weighted")


def log_combine(preds: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """A weighted average in log space (weights summing to 1), renormalised: `log_average` with weights."""
    z = sum(w * np.log(np.clip(preds[m], KAGGLE_EPS, 1.0)) for m, w in weights.items() if w > 0)
    return with_temperature(np.exp(z), 1.0)


def fit_weights(preds: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Non-negative weights summing to 1 over the members that minimise the log loss of their log-space combination
    on these rows (SLSQP on the simplex, from equal weights)."""
    names = list(preds)
    logs = np.stack([np.log(np.clip(preds[m], KAGGLE_EPS, 1.0)) for m in names])  # (members, rows, classes)
    rows = np.arange(len(labels))

    def loss(w):
        z = np.tensordot(w, logs, axes=1)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, labels] - np.log(np.exp(z).sum(axis=1))).mean())

    start = np.full(len(names), 1.0 / len(names))
    res = minimize(loss, start, method="SLSQP", bounds=[(0.0, 1.0)] * len(names),
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}])
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else start
    if loss(w) > loss(start):  # SLSQP stopped somewhere worse (it can report failure near a vertex): equal weights
        w = start
    return {m: float(v) for m, v in zip(names, w)}


def kind_weights(kind: str, preds: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """The members' weights for an ensemble kind: every model's heads, finetuned networks or both, equally; or
    weights fitted on (preds, labels)."""
    if kind == "weighted":
        return fit_weights(preds, labels)
    chosen = [m for m in preds if kind == "both" or m.endswith(f"/{kind}")]
    return {m: 1.0 / len(chosen) if m in chosen else 0.0 for m in preds}


@dataclass(frozen=True)
class Choice:
    """An ensemble kind with its fitted weights, a calibration with its fitted value, and for a label submission
    of two classes the threshold on P(second class) fitted for the metric."""

    kind: str
    weights: dict
    method: str
    value: float | None
    threshold: float | None = None

    def apply(self, preds: dict[str, np.ndarray]) -> np.ndarray:
        return calibrate(self.method, self.value, log_combine(preds, self.weights))

    def __str__(self) -> str:
        return f"{self.kind}+{self.method}" + (f"@{self.threshold:.3g}" if self.threshold is not None else "")


def thresholded(comp: Competition) -> bool:
    """Whether the competition's submission is a label decided by a fitted threshold: a binary problem scored
    on labels (accuracy or F1), where the best cut of P(second class) need not be 0.5."""
    return comp.submission == "label" and comp.num_classes == 2 and comp.metric in ("accuracy", "f1_micro", "f1_macro")


def fit_threshold(name: str, probs: np.ndarray, labels: np.ndarray) -> float:
    """The cut of P(second class) that maximises metric `name` (accuracy or F1) on these rows: every cut between
    two distinct predictions is scored at once from cumulative counts (O(N log N)), and of the best cuts the
    middle one of the first run is taken, so the cut sits well inside the gap instead of at its edge."""
    p, y = probs[:, 1], np.asarray(labels)
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    values = np.unique(ps)
    cuts = np.concatenate([[0.0], (values[1:] + values[:-1]) / 2, [np.nextafter(max(1.0, values[-1]), np.inf)]])
    first = np.searchsorted(ps, cuts, side="left")  # rows first.. are predicted positive
    n, pos = len(ys), int(ys.sum())
    tp = pos - np.concatenate([[0], np.cumsum(ys)])[first]
    fp = (n - first) - tp
    fn, tn = pos - tp, (n - pos) - fp
    if name in ("accuracy", "f1_micro"):  # micro-F1 of one label per row is accuracy
        score = (tp + tn) / n
    else:  # macro-F1 over the classes present in the truth or the predictions
        f1s = [np.where(d > 0, 2 * t / np.maximum(d, 1), np.nan)
               for t, d in ((tp, 2 * tp + fp + fn), (tn, 2 * tn + fn + fp))]
        score = np.nanmean(np.stack(f1s), axis=0)
    best = np.flatnonzero(score >= np.nanmax(score) - 1e-12)
    run = best[: np.argmax(np.diff(np.append(best, best[-1] + 2)) > 1) + 1]  # the first run of equal best cuts
    return float(cuts[run[len(run) // 2]])


def with_threshold(comp: Competition, choice: Choice, probs: np.ndarray, labels: np.ndarray) -> Choice:
    """`choice` with its threshold fitted on (probs, labels) when the competition needs one."""
    if not thresholded(comp):
        return choice
    return dataclasses.replace(choice, threshold=fit_threshold(comp.metric, probs, labels))


def evaluate(comp: Competition, probs: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict:
    """Log loss, accuracy and the competition's metric (its labels decided as the submission decides them)."""
    predicted = decide(probs, threshold)
    out = {**scores(probs, labels), "accuracy": metric("accuracy", probs, labels, predicted)}
    out[comp.metric] = metric(comp.metric, probs, labels, predicted)
    return out


def fit_choice(kind: str, method: str, preds: dict[str, np.ndarray], labels: np.ndarray) -> Choice:
    """Weights, then the calibration of their combination, fitted on the same rows."""
    weights = kind_weights(kind, preds, labels)
    return Choice(kind, weights, method, fit_calibration(method, log_combine(preds, weights), labels))


DEPARTURES = {"finetune": 0, "head": 1, "both": 1, "weighted": 2, "none": 0, "temperature": 1, "clip": 1}
"""How far each kind and calibration departs from the recipe's product (its finetuned networks, uncalibrated):
adding or swapping in the heads, fitting weights, fitting a calibration. What the one-standard-error rule counts."""


def simplest_within_noise(losses: dict[tuple, np.ndarray]) -> tuple:
    """The one-standard-error rule (Breiman et al.): of the candidates whose mean row loss is within one standard
    error (of the paired row differences) of the best's, the one that departs least from the finetuned networks.
    On small folds a temperature, weights or the heads win the other folds by a few confident misses and cost the
    held one (benchmarks/RESULTS.md, issue 17); with many rows the standard error shrinks and the best wins."""
    losses = {c: v for c, v in losses.items() if np.isfinite(v).all()} or losses  # a diverged member's NaNs
    best = min(losses, key=lambda c: losses[c].mean())
    def near(c):
        d = losses[c] - losses[best]
        return c == best or (len(d) > 1 and d.mean() <= d.std(ddof=1) / np.sqrt(len(d)))
    return min((c for c in losses if near(c)),
               key=lambda c: (DEPARTURES[c[0]] + DEPARTURES[c[1]], losses[c].mean()))


def choose(oof: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, kinds, methods) -> Choice:
    """The kind and calibration chosen on cross-validated log loss over these rows (each of their folds predicted
    by weights and calibration fitted on the others, so a fitted combination does not win by fitting; the simplest
    within noise of the best, see `simplest_within_noise`), refitted on all of them. With a single fold, the lowest
    log loss after fitting on it."""
    if len(kinds) * len(methods) == 1:
        return fit_choice(kinds[0], methods[0], oof, labels)
    groups = np.unique(folds)
    losses = {}
    for kind in kinds:
        if len(groups) < 2:
            combined = log_combine(oof, kind_weights(kind, oof, labels))
            for method in methods:
                value = fit_calibration(method, combined, labels)
                losses[kind, method] = scores(calibrate(method, value, combined), labels)["logloss"]
            continue
        pred = {method: np.empty_like(next(iter(oof.values()))) for method in methods}
        for j in groups:
            rest, held = folds != j, folds == j
            weights = kind_weights(kind, {m: p[rest] for m, p in oof.items()}, labels[rest])  # once per kind
            fitted = log_combine({m: p[rest] for m, p in oof.items()}, weights)
            applied = log_combine({m: p[held] for m, p in oof.items()}, weights)
            for method in methods:
                pred[method][held] = calibrate(method, fit_calibration(method, fitted, labels[rest]), applied)
        for method in methods:
            losses[kind, method] = row_losses(pred[method], labels)
    if len(groups) < 2:
        kind, method = min(losses, key=losses.get)
    else:
        kind, method = simplest_within_noise(losses)
    return fit_choice(kind, method, oof, labels)


def choose_all(comp: Competition, oof: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, kinds,
               methods) -> Choice:
    """`choose`, then the threshold (where the competition needs one) fitted on the same rows."""
    c = choose(oof, labels, folds, kinds, methods)
    return with_threshold(comp, c, c.apply(oof), labels)


def cross_fitted(comp: Competition, oof: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, kinds,
                 methods):
    """Each fold's rows predicted by the kind, weights, calibration and threshold chosen and fitted on the other
    folds only.

    So the reported score is what the whole procedure (choose, fit, apply) gives on rows it never saw.
    Returns the predictions and each fold's choice.
    """
    out = np.empty_like(next(iter(oof.values())))
    choices = {}
    for k in np.unique(folds):
        rest, held = folds != k, folds == k
        c = choose_all(comp, {m: p[rest] for m, p in oof.items()}, labels[rest], folds[rest], kinds, methods)
        out[held] = c.apply({m: p[held] for m, p in oof.items()})
        choices[str(k)] = c
    return out, choices


def log_average(predictions) -> np.ndarray:
    """Average probability arrays in log space (a normalised geometric mean).

    Where the fold models agree this is as confident as each of them, unlike the arithmetic mean, so a
    calibration fitted on single models' out-of-fold predictions still fits the averaged test predictions.
    (A temperature commutes with it: calibrating each model then averaging gives the same result.)
    """
    z = np.mean([np.log(np.clip(p, KAGGLE_EPS, 1.0)) for p in predictions], axis=0)
    return with_temperature(np.exp(z), 1.0)


def pooled(features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N, C) float32 vectors: pooled features as they are, a cut backbone's (N, C, H, W) maps averaged over space,
    read `chunk` rows at a time from the memory-mapped file. Flattened maps of 80k State Farm test frames would be
    ~10 GB (the brute-force search holds them all); their pooled vectors are 0.4 GB."""
    if features.ndim <= 2:
        return np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    out = np.empty(features.shape[:2], dtype=np.float32)
    for i in range(0, len(features), chunk):
        out[i:i + chunk] = np.asarray(features[i:i + chunk], dtype=np.float32).mean(axis=tuple(range(2, features.ndim)))
    return out


def nearest(features: np.ndarray, k: int) -> np.ndarray | None:
    """Each row's k nearest other rows (cosine, in the backbone's pooled feature space); None with no other row.
    scikit-learn's brute-force search computes the distances a block of rows at a time (its working memory)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(features) - 1)
    if k < 1:
        return None
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    return index.fit(pooled(features)).kneighbors(return_distance=False)  # excludes the row itself


def neighbour_smooth(probs: np.ndarray, features: np.ndarray, k: int, weight: float,
                     neighbours: np.ndarray | None = None) -> np.ndarray:
    """Each row's prediction averaged with those of its k nearest rows: test images are video frames, so a frame's
    neighbours show the same driver doing the same thing (State Farm's winners' biggest gain). Only predictions
    are shared between rows, never labels. `neighbours` reuses a search already made."""
    neighbours = nearest(features, k) if neighbours is None else neighbours
    if neighbours is None:
        return probs
    return (1 - weight) * probs + weight * probs[neighbours].mean(axis=1)


def smooth_members(oof: dict, test: dict, paths: Paths, fold_of: np.ndarray, k: int, weight: float) -> None:
    """`ensemble.neighbours` applied to every member: out-of-fold rows find their neighbours among the same fold's
    validation rows (unseen drivers, as the test set's are), test rows among the test rows."""
    train_features = pooled(np.load(paths.features / "train.npy", mmap_mode="r"))  # the first model's
    folds = {fold: np.flatnonzero(fold_of == fold) for fold in np.unique(fold_of)}
    within = {fold: nearest(train_features[rows], k) for fold, rows in folds.items()}  # searched once per pool
    test_neighbours = nearest(np.load(paths.features / "test.npy", mmap_mode="r"), k)
    for member in list(oof):
        smoothed = oof[member].copy()
        for fold, rows in folds.items():
            smoothed[rows] = neighbour_smooth(oof[member][rows], None, k, weight, within[fold])
        oof[member] = smoothed
        test[member] = neighbour_smooth(test[member], None, k, weight, test_neighbours)


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
    oof, test = {}, {}
    for model in params.models:  # every model's fold predictions are members, named <model>/<stage>
        for stage in STAGES:
            dirs = [paths.of(model).fold_model(stage, k) for k in params.folds]
            oof[f"{model}/{stage}"] = load_oof(comp, dirs, ids)
            test[f"{model}/{stage}"] = log_average(load_test(dirs))
    own = dict(oof)
    if ep.neighbours:  # fixed k and weight: nothing is chosen on the rows they are scored on
        smooth_members(oof, test, paths, fold_of, ep.neighbours, ep.neighbour_weight)
    kinds = KINDS if ep.members == "auto" else (ep.members,)
    # calibration serves log loss only: a metric of labels or of ranks is blind to it
    methods = (("none", "temperature", "clip") if ep.calibration == "auto" and comp.metric == "logloss"
               else ("none",) if ep.calibration == "auto" else (ep.calibration,))

    honest, fold_choices = cross_fitted(comp, oof, labels, fold_of, kinds, methods)
    final_choice = choose_all(comp, oof, labels, fold_of, kinds, methods)  # for the submission: every row

    _, test_index = load_cache(paths.cache, "test")
    sample = read_sample(comp, paths.raw)
    final = final_choice.apply(test)
    sub = make_submission(comp, test_index["id"], final, final_choice.threshold)
    validate_submission(comp, sub, sample, str(paths.submission))
    write_csv(paths.submission, sub, float_format=FLOAT_FORMAT)
    # Top level: a few flat keys, small enough to commit, so `dvc metrics diff main` works in any clone. The
    # honest rows' labels are decided by each fold's own threshold.
    predicted = np.empty(len(labels), dtype=int)
    for k, c in fold_choices.items():
        predicted[fold_of == int(k)] = decide(honest[fold_of == int(k)], c.threshold)
    metrics = {**scores(honest, labels), "metric": comp.metric,
               "accuracy": metric("accuracy", honest, labels, predicted),
               comp.metric: metric(comp.metric, honest, labels, predicted)}
    if paths.demo_answers.is_file():  # the demo knows its test labels: report the "leaderboard" score too
        answers = pd.read_csv(paths.demo_answers, dtype=str, keep_default_na=False).set_index("id")
        answers = answers.loc[test_index["id"], "label"]
        written = submission_probs(comp, sub)  # what Kaggle would score: the clipped values (or labels) in the file
        truth = encode_labels(answers.reset_index(drop=True), comp.classes)
        if comp.submission != "label":  # a file of labels has no log loss
            metrics["demo_test_logloss"] = scores(written, truth)["logloss"]
        metrics["demo_test_accuracy"] = metric("accuracy", written, truth)
        metrics[f"demo_test_{comp.metric}"] = metric(comp.metric, written, truth)
    metrics = _rounded({**metrics, "member": final_choice.kind, "calibration": final_choice.method,
                        "source": read_json(paths.raw / "summary.json")["source"], "test_rows": len(sub)})
    _, train_index = load_cache(paths.cache, "train")
    detail = {
        "logloss": metrics["logloss"],
        "calibration_value": final_choice.value,
        "weights": _rounded(final_choice.weights),
        "members_logloss": _rounded({m: scores(p, labels)["logloss"] for m, p in oof.items()}),
        "threshold": final_choice.threshold,
        "environments": environments(paths, params.models, params.folds, STAGES),
        "folds": per_fold(comp, list(params.folds), ids, honest, labels, fold_of, fold_choices, own),
        "groups": per_group(comp, train_index["group"].astype(str).to_numpy(), honest, labels, fold_of, fold_choices)
        if comp.group_column else {},
    }
    # The cross-fitted out-of-fold predictions themselves, for the report's confusion matrix and image grids.
    oof_df = pd.DataFrame(honest, columns=list(comp.classes))
    oof_df.insert(0, "fold", fold_of)
    oof_df.insert(0, "group", train_index["group"].astype(str).to_numpy())
    oof_df.insert(0, "predicted", np.asarray(comp.classes)[predicted])  # as decided for the metric (threshold)
    oof_df.insert(0, "label", np.asarray(comp.classes)[labels])
    oof_df.insert(0, "id", ids)
    write_csv(paths.oof, oof_df)
    write_json(paths.cv, detail)
    write_json(paths.metrics, metrics)
    return {**metrics, **detail}


def summary(result: dict) -> str:
    name = result["metric"]
    demo = "".join(f"; demo test {key} {result[f'demo_test_{key}']:.4f}" for key in dict.fromkeys(("logloss", name))
                   if f"demo_test_{key}" in result)
    extra = f", {name} {result[name]:.4f}" if name not in ("logloss", "accuracy") else ""
    return (f"CV log loss {result['logloss']:.4f}, accuracy {result['accuracy']:.4f}{extra} ({result['member']}, "
            f"{result['calibration']}){demo}")


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=summary,
               wrote=lambda comp, model, fold: (Paths(comp).submission, Paths(comp).oof, Paths(comp).metrics,
                                                 Paths(comp).cv))


if __name__ == "__main__":
    main()
