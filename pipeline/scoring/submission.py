"""Kaggle's submission format for each competition, and the checks a file must pass before it is uploaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.competitions import Competition
from pipeline.core.errors import SubmissionError
from pipeline.core.paths import EXTRACTED
from pipeline.scoring.metrics import metric, row_losses


def read_sample(comp: Competition, raw: Path) -> pd.DataFrame:
    """The competition's sample_submission.csv, ids as strings (as Kaggle compares them)."""
    return pd.read_csv(raw / EXTRACTED / "sample_submission.csv", dtype={comp.id_column: str},
                       keep_default_na=False)


WRITE_EPS = 1e-8
FLOAT_FORMAT = "%.8g"  # with WRITE_EPS: no probability is ever written as 0 or 1


def make_submission(comp: Competition, ids, probs: np.ndarray, threshold: float | None = None) -> pd.DataFrame:
    """Class probabilities (N, C) -> the competition's submission frame: probabilities, or for a `label`
    submission each row's class (`decide`, with `threshold` for a binary problem).

    Probabilities are kept within [1e-8, 1 - 1e-8]: Kaggle clips at 1e-15, so a written 0 on a true class would
    cost ~34.5 where 1e-8 costs ~18.4; a value rounded to 0 or 1 by the CSV format would do the same.
    """
    if comp.submission == "label":
        sub = pd.DataFrame({comp.id_column: list(ids)})
        sub[comp.submission_columns[0]] = np.asarray(comp.classes)[decide(probs, threshold)]
        return sub
    probs = np.clip(probs, WRITE_EPS, 1 - WRITE_EPS)
    if not comp.binary:
        probs = probs / probs.sum(axis=1, keepdims=True)
    sub = pd.DataFrame({comp.id_column: list(ids)})
    if comp.binary:
        sub[comp.submission_columns[0]] = probs[:, -1]  # P(positive class), e.g. P(dog)
    else:
        for i, column in enumerate(comp.submission_columns):
            sub[column] = probs[:, i]
    return sub


def decide(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Each row's predicted class: the most probable, or for two classes with `threshold`, the second class
    where its probability reaches the threshold."""
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(axis=1)


def submission_probs(comp: Competition, sub: pd.DataFrame) -> np.ndarray:
    """A submission frame's probabilities as (N, C), inverting `make_submission` (a label is probability 1)."""
    if comp.submission == "label":
        lookup = {c: i for i, c in enumerate(comp.classes)}
        return np.eye(comp.num_classes)[sub[comp.submission_columns[0]].astype(str).map(lookup).to_numpy()]
    values = sub[list(comp.submission_columns)].to_numpy(dtype=np.float64)
    return np.hstack([1 - values, values]) if comp.binary else values


def validate_submission(comp: Competition, sub: pd.DataFrame, sample: pd.DataFrame, name: str = "submission") -> None:
    """Raise SubmissionError listing every way `sub` differs from what Kaggle expects."""
    problems = []
    if list(sub.columns) != list(sample.columns):
        problems.append(f"columns are {list(sub.columns)}, expected {list(sample.columns)}")
    elif len(sub) != len(sample):
        problems.append(f"{len(sub)} rows, expected {len(sample)} (one per test image)")
    elif list(sub[comp.id_column].astype(str)) != list(sample[comp.id_column].astype(str)):
        problems.append(f"the {comp.id_column!r} column does not list sample_submission.csv's ids in its order")
    elif comp.submission == "label":
        given = sub[comp.submission_columns[0]].astype(str)
        unknown = sorted(set(given) - set(comp.classes))
        if unknown:
            problems.append(f"{comp.submission_columns[0]!r} holds {len(unknown)} value(s) that are not classes "
                            f"({', '.join(unknown[:5])}); expected one of {', '.join(comp.classes)}")
    else:
        values = sub[list(comp.submission_columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            problems.append("some probabilities are missing or not finite")
        elif (values < 0).any() or (values > 1).any():
            problems.append("some probabilities are outside [0, 1]")
        elif not comp.binary and not np.allclose(values.sum(axis=1), 1.0, atol=1e-4):
            problems.append("some rows' probabilities do not sum to 1")
    if problems:
        raise SubmissionError(
            f"{name} is not a valid {comp.title} submission: " + "; ".join(problems)
            + ". Re-create it with `dvc repro ensemble@" + comp.name + "`."
        )


def score_answers(comp: Competition, sub: pd.DataFrame, answers: pd.Series) -> dict:
    """What Kaggle would say of submission frame `sub` given the true `answers` (labels indexed by id, as strings):
    the competition's metric, accuracy and (for probabilities) log loss with its standard error over the rows,
    from the values as written in the file. Rows without an answer are left out (a held-out subset)."""
    ids = sub[comp.id_column].astype(str)
    known = ids.isin(answers.index).to_numpy()
    lookup = {c: i for i, c in enumerate(comp.classes)}
    truth = answers.loc[ids[known]].map(lookup).to_numpy()
    probs = submission_probs(comp, sub)[known]
    out = {"rows": int(known.sum()), "accuracy": metric("accuracy", probs, truth)}
    if comp.submission != "label":  # a file of labels has no log loss
        losses = row_losses(probs, truth)
        out.update(logloss=float(losses.mean()), logloss_se=float(losses.std(ddof=1) / np.sqrt(len(losses)))
                   if len(losses) > 1 else float("nan"))
    out[comp.metric] = metric(comp.metric, probs, truth)
    return out
