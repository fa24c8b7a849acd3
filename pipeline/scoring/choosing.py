"""How the members combine, chosen without the rows it is scored on. Kinds: every head, every finetuned network,
both equally, or non-negative weights fitted to minimise log loss, all in log space; each with a calibration
(`pipeline.scoring.calibration`). The kind and calibration are chosen by cross-validation over the rows they are fitted
on, so fitted weights do not win by fitting, and of those within one standard error of the best the one that
departs least from the finetuned networks uncalibrated; the standard error is taken over independent units (the
record's groups, e.g. drivers, or else the folds), never over rows that share a driver. A fitted candidate is only
offered where the fitting rows hold enough errors to fit it (`enough_errors`). `cross_fitted` gives each fold's rows
what was chosen and fitted on the other folds: the honest out-of-fold predictions the reported score comes from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.stats import t as student_t

from pipeline.core.competitions import Competition
from pipeline.scoring.calibration import calibrate, fit_calibration, fit_threshold, thresholded, with_temperature
from pipeline.scoring.metrics import KAGGLE_EPS, metric, row_losses, scores
from pipeline.scoring.submission import decide

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


EVENTS_PER_PARAMETER = 10
"""Misclassified fitting rows needed per fitted parameter (the events-per-variable rule of logistic regression,
Peduzzi et al. 1996). A temperature, a clip level or a member's weight is estimated from the rows the members
get wrong: on rows they get right, sharper is always better, so on near-perfect folds a fit just sharpens, and
the one held-out fold that has confident misses pays (issue 30: a Dogs vs Cats fold 0.153 -> 0.280). Below
this count the candidate is not offered, which shrinks the choice to no calibration and equal weights."""


def fitted_parameters(kind: str, method: str, members: int) -> int:
    """How many values a candidate fits: a weight per member but one (they sum to 1), and a calibration's one."""
    return (members - 1 if kind == "weighted" else 0) + (method in ("temperature", "clip"))


def enough_errors(kind: str, method: str, oof: dict[str, np.ndarray], labels: np.ndarray) -> bool:
    """Whether these rows hold enough misclassified rows (by the finetuned networks, or every member where there
    are none) to fit the candidate's parameters: `EVENTS_PER_PARAMETER` per parameter."""
    reference = [m for m in oof if m.endswith("/finetune")] or list(oof)
    combined = log_combine(oof, {m: 1.0 / len(reference) if m in reference else 0.0 for m in oof})
    errors = int((combined.argmax(axis=1) != labels).sum())
    return errors >= EVENTS_PER_PARAMETER * fitted_parameters(kind, method, len(oof))


def unit_standard_error(d: np.ndarray, units: np.ndarray) -> float:
    """The standard error of the mean of `d` when rows of one unit are correlated and units are independent (the
    cluster-robust one: each unit's summed deviation is one observation); infinite with fewer than 2 units."""
    labels, index = np.unique(units, return_inverse=True)
    if len(labels) < 2:
        return float("inf")
    totals = np.bincount(index, weights=d - d.mean(), minlength=len(labels))
    return float(np.sqrt(len(labels) / (len(labels) - 1) * (totals ** 2).sum()) / len(d))


def t_95(units: np.ndarray) -> float:
    """Student's t quantile for a two-sided 95% test over these units (1.96 for many)."""
    return float(student_t.ppf(0.975, max(len(np.unique(units)) - 1, 1)))


def simplest_within_noise(losses: dict[tuple, np.ndarray], units: np.ndarray) -> tuple:
    """Of the candidates whose mean row loss is not beyond noise from the best's, the one that departs least from
    the finetuned networks. Beyond noise: the paired row differences' mean exceeds Student's t (95%, two-sided, on
    units - 1 degrees of freedom, as `pipeline compare` judges) times its standard error over `units`, one label
    per row of what is independent (drivers, or folds). State Farm's rows of one driver move together, and a gain
    counted over rows as if independent passes noise for a gain; with 4 inner folds as units one standard error
    is no test at all (issue 30: `both` won 4 folds' mean and cost the fifth 1.39x). On small folds a temperature, weights or the heads win the other folds by a few confident misses
    and cost the held one (benchmarks/RESULTS.md, issue 17); with many units the standard error shrinks and the
    best wins."""
    losses = {c: v for c, v in losses.items() if np.isfinite(v).all()} or losses  # a diverged member's NaNs
    best = min(losses, key=lambda c: losses[c].mean())

    def near(c):
        d = losses[c] - losses[best]
        return c == best or d.mean() <= t_95(units) * unit_standard_error(d, units)
    return min((c for c in losses if near(c)),
               key=lambda c: (DEPARTURES[c[0]] + DEPARTURES[c[1]], losses[c].mean()))


def choose(oof: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, kinds, methods,
           groups: np.ndarray | None = None) -> Choice:
    """The kind and calibration chosen on cross-validated log loss over these rows (each of their folds predicted
    by weights and calibration fitted on the others, so a fitted combination does not win by fitting; the simplest
    within noise of the best, see `simplest_within_noise`, its standard error over `groups` where the record has
    them, else over the folds), refitted on all of them. Candidates the rows hold too few errors to fit are not
    offered (`enough_errors`). With a single fold, the lowest log loss after fitting on it."""
    offered = [(k, m) for k in kinds for m in methods if enough_errors(k, m, oof, labels)]
    if not offered:  # every candidate fits something: the simplest of them, fitted as well as these rows allow
        offered = [min(((k, m) for k in kinds for m in methods),
                       key=lambda c: (fitted_parameters(*c, len(oof)), DEPARTURES[c[0]] + DEPARTURES[c[1]]))]
    if len(offered) == 1:
        return fit_choice(*offered[0], oof, labels)
    kinds = list(dict.fromkeys(k for k, _ in offered))
    parts = np.unique(folds)
    losses = {}
    for kind in kinds:
        mine = [m for k, m in offered if k == kind]
        if len(parts) < 2:
            combined = log_combine(oof, kind_weights(kind, oof, labels))
            for method in mine:
                value = fit_calibration(method, combined, labels)
                losses[kind, method] = scores(calibrate(method, value, combined), labels)["logloss"]
            continue
        pred = {method: np.empty_like(next(iter(oof.values()))) for method in mine}
        for j in parts:
            rest, held = folds != j, folds == j
            weights = kind_weights(kind, {m: p[rest] for m, p in oof.items()}, labels[rest])  # once per kind
            fitted = log_combine({m: p[rest] for m, p in oof.items()}, weights)
            applied = log_combine({m: p[held] for m, p in oof.items()}, weights)
            for method in mine:
                pred[method][held] = calibrate(method, fit_calibration(method, fitted, labels[rest]), applied)
        for method in mine:
            losses[kind, method] = row_losses(pred[method], labels)
    if len(parts) < 2:
        kind, method = min(losses, key=losses.get)
    else:
        kind, method = simplest_within_noise(losses, folds if groups is None else groups)
    return fit_choice(kind, method, oof, labels)


def choose_all(comp: Competition, oof: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, kinds,
               methods, groups: np.ndarray | None = None) -> Choice:
    """`choose`, then the threshold (where the competition needs one) fitted on the same rows."""
    c = choose(oof, labels, folds, kinds, methods, groups)
    return with_threshold(comp, c, c.apply(oof), labels)


def cross_fitted(comp: Competition, oof: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, kinds,
                 methods, groups: np.ndarray | None = None):
    """Each fold's rows predicted by the kind, weights, calibration and threshold chosen and fitted on the other
    folds only (`groups`: each row's group, e.g. driver, where the record has them: the choice's independent units).

    So the reported score is what the whole procedure (choose, fit, apply) gives on rows it never saw.
    Returns the predictions and each fold's choice.
    """
    out = np.empty_like(next(iter(oof.values())))
    choices = {}
    for k in np.unique(folds):
        rest, held = folds != k, folds == k
        c = choose_all(comp, {m: p[rest] for m, p in oof.items()}, labels[rest], folds[rest], kinds, methods,
                       None if groups is None else groups[rest])
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
