"""The competitions' scores of predicted probabilities, as Kaggle computes them (numpy and scikit-learn only).

scikit-learn is imported where a metric needs it: every training stage scores each epoch with `scores`, and
importing `sklearn.metrics` costs those stages over a second each (a third of their start-up)."""

from __future__ import annotations

import numpy as np

KAGGLE_EPS = 1e-15


def row_losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's log loss as Kaggle computes it (rows rescaled to sum to 1, clipped at 1e-15, rescaled again):
    their mean is the log loss; the rows themselves give paired differences (the ensemble's noise rule)."""
    p = np.clip(probs / probs.sum(axis=1, keepdims=True), KAGGLE_EPS, 1 - KAGGLE_EPS)
    return -np.log(p[np.arange(len(labels)), labels] / p.sum(axis=1))


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Kaggle's log loss (the mean of `row_losses`) and accuracy."""
    return {
        "logloss": float(row_losses(probs, labels).mean()),
        "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
    }


HIGHER_IS_BETTER = {"logloss": False, "accuracy": True, "roc_auc": True, "f1_micro": True, "f1_macro": True}
"""Which way each metric improves (compare's verdicts)."""


def metric(name: str, probs: np.ndarray, labels: np.ndarray, predicted: np.ndarray | None = None) -> float:
    """Kaggle's metric `name` (see competitions.METRICS) of probabilities (N, C), and for the metrics of labels
    (accuracy, F1) the `predicted` classes (default: each row's most probable). ROC AUC of two classes ranks
    P(second class); of more, it averages one class against the rest (NaN when a class is absent from `labels`)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    if name == "logloss":
        return scores(probs, labels)["logloss"]
    if name == "roc_auc":
        if len(np.unique(labels)) < probs.shape[1]:
            return float("nan")
        if probs.shape[1] == 2:
            return float(roc_auc_score(labels, probs[:, 1]))
        return float(roc_auc_score(labels, probs / probs.sum(axis=1, keepdims=True), multi_class="ovr"))
    predicted = probs.argmax(axis=1) if predicted is None else predicted
    if name == "accuracy":
        return float(accuracy_score(labels, predicted))
    average = {"f1_micro": "micro", "f1_macro": "macro"}[name]
    # the classes in the truth or the predictions, as Kaggle and scikit-learn count them: a class absent from
    # both (a fold without it) is not a class scored 0
    return float(f1_score(labels, predicted, labels=np.union1d(labels, predicted), average=average, zero_division=0))
