"""Stage `ensemble@<comp>`: every fold's head and finetune predictions -> `submissions/<comp>.csv`.

Out-of-fold predictions choose the members (head, finetune, or both averaged) and fit a log-loss calibration
(a temperature, or a clip like the course's [0.05, 0.95] but fitted); test predictions are the folds' average,
calibrated the same way. The reported `logloss` is honest: each fold's rows are calibrated by a fit on the
other folds only. Outputs: the submission (checked against sample_submission.csv) and `metrics/<comp>.json`;
on demo data that also holds `demo_test`, the score on the demo's secret test labels (what Kaggle would say).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from pipeline.competitions import Competition, get_competition
from pipeline.config import Params
from pipeline.data import encode_labels, load_cache
from pipeline.engine import KAGGLE_EPS, scores
from pipeline.io import read_json, write_csv, write_json
from pipeline.outputs import load_oof, load_test, train_rows
from pipeline.paths import Paths
from pipeline.stage import stage_main
from pipeline.submission import make_submission, read_sample, validate_submission

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
        res = minimize_scalar(lambda lt: scores(with_temperature(probs, np.exp(lt)), labels)["logloss"],
                              bounds=(np.log(0.05), np.log(20.0)), method="bounded")
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


def cross_fitted(method: str, probs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Calibrate each fold's rows with a fit on the other folds: an unbiased estimate of calibrated log loss."""
    out = probs.copy()
    for k in np.unique(folds):
        rest = folds != k
        out[~rest] = calibrate(method, fit_calibration(method, probs[rest], labels[rest]), probs[~rest])
    return out


def fold_scores(comp: Competition, paths: Paths, folds: list[int]) -> dict:
    return {
        str(k): {f"{stage}_{m}": v for stage in STAGES for m, v in read_json(paths.fold_metrics(stage, k)).items()
                 if m in ("logloss", "accuracy", "best_epoch")}
        for k in folds
    }


def run(params: Params, comp_name: str, root: Path = Path(".")) -> dict:
    comp = get_competition(comp_name)
    ep = params.comp(comp_name).ensemble
    paths = Paths(comp_name, root)
    ids, labels, fold_of = train_rows(paths, comp)
    oof = {s: load_oof(comp, [paths.model(s, k) for k in params.folds], ids) for s in STAGES}
    test = {s: load_test([paths.model(s, k) for k in params.folds]) for s in STAGES}
    oof["both"], test["both"] = (oof["head"] + oof["finetune"]) / 2, (test["head"] + test["finetune"]) / 2
    candidates = {m: scores(p, labels) for m, p in oof.items()}
    member = min(candidates, key=lambda m: candidates[m]["logloss"]) if ep.members == "auto" else ep.members

    methods = ("none", "temperature", "clip") if ep.calibration == "auto" else (ep.calibration,)
    calibrated = {m: scores(cross_fitted(m, oof[member], labels, fold_of), labels) for m in methods}
    method = min(calibrated, key=lambda m: calibrated[m]["logloss"])
    value = fit_calibration(method, oof[member], labels)

    _, test_index = load_cache(paths.cache, "test")
    sample = read_sample(comp, paths.raw)
    final = calibrate(method, value, test[member])
    sub = make_submission(comp, test_index["id"], final)
    validate_submission(comp, sub, sample, str(paths.submission))
    write_csv(paths.submission, sub, float_format="%.6f")
    metrics = {
        **calibrated[method],
        "logloss_uncalibrated": candidates[member]["logloss"],
        "member": member,
        "calibration": method,
        "calibration_value": value,
        "members_logloss": {m: c["logloss"] for m, c in candidates.items()},
        "calibrations_logloss": {m: c["logloss"] for m, c in calibrated.items()},
        "folds": fold_scores(comp, paths, list(params.folds)),
    }
    if paths.demo_answers.is_file():  # the demo knows its test labels: report the "leaderboard" score too
        answers = pd.read_csv(paths.demo_answers, dtype=str).set_index("id").loc[test_index["id"], "label"]
        metrics["demo_test"] = scores(final, encode_labels(answers.reset_index(drop=True), comp.classes))
    write_json(paths.metrics, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
