"""The competitions' scores of predicted probabilities, as Kaggle computes them (numpy and scikit-learn only)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss

KAGGLE_EPS = 1e-15


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Kaggle's log loss (rows rescaled to sum to 1, clipped at 1e-15) and accuracy."""
    p = np.clip(probs / probs.sum(axis=1, keepdims=True), KAGGLE_EPS, 1 - KAGGLE_EPS)
    p = p / p.sum(axis=1, keepdims=True)
    return {
        "logloss": float(log_loss(labels, p, labels=np.arange(probs.shape[1]))),
        "accuracy": float(accuracy_score(labels, probs.argmax(axis=1))),
    }
