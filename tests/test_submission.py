"""Submission checks catch every way a file can differ from Kaggle's format."""

import numpy as np
import pandas as pd
import pytest

from pipeline.core.competitions import get_competition
from pipeline.scoring.calibration import fit_calibration, with_clip, with_temperature
from pipeline.scoring.metrics import scores
from pipeline.core.errors import SubmissionError
from pipeline.scoring.submission import make_submission, validate_submission

SF = get_competition("statefarm")
DC = get_competition("dogscats")


def sample(comp, n=4):
    ids = [f"img_{i}.jpg" for i in range(n)] if comp is SF else [str(i) for i in range(1, n + 1)]
    return pd.DataFrame({comp.id_column: ids, **{c: 0.1 for c in comp.submission_columns}})


def probs(comp, n=4, seed=0):
    p = np.random.default_rng(seed).random((n, comp.num_classes))
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("comp", [SF, DC])
def test_a_made_submission_is_valid(comp):
    s = sample(comp)
    validate_submission(comp, make_submission(comp, s[comp.id_column], probs(comp)), s)


def test_dogscats_label_is_the_probability_of_dog():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    sub = make_submission(DC, ["1", "2"], p)
    assert list(sub.columns) == ["id", "label"] and list(sub["label"]) == [0.1, 0.8]


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda s: s.drop(columns=["c9"]), "columns are"),
        (lambda s: s.iloc[::-1], "in its order"),
        (lambda s: s.iloc[:-1], "3 rows, expected 4"),
        (lambda s: s.assign(c0=np.nan), "not finite"),
        (lambda s: s.assign(c0=1.5), "outside [0, 1]"),
        (lambda s: s.assign(c0=s["c0"] + 0.3), "do not sum to 1"),
    ],
)
def test_invalid_submissions_are_refused_with_the_reason(breakage, message):
    s = sample(SF)
    sub = breakage(make_submission(SF, s["img"], probs(SF)))
    with pytest.raises(SubmissionError, match="not a valid State Farm") as e:
        validate_submission(SF, sub, s)
    assert message in str(e.value)


def test_calibration_fixes_overconfidence_and_never_hurts_on_its_fit_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    logits = rng.normal(0, 1, (2000, 10))
    logits[np.arange(2000), labels] += 2.0
    overconfident = np.exp(4 * logits)
    overconfident /= overconfident.sum(axis=1, keepdims=True)
    raw = scores(overconfident, labels)["logloss"]
    t = fit_calibration("temperature", overconfident, labels)
    assert t == pytest.approx(2.0, rel=0.15)  # the Bayes posterior here is softmax(2 * logits)
    assert scores(with_temperature(overconfident, t), labels)["logloss"] < raw - 0.2
    eps = fit_calibration("clip", overconfident, labels)
    clipped = with_clip(overconfident, eps)
    assert scores(clipped, labels)["logloss"] < raw
    assert np.allclose(clipped.sum(axis=1), 1) and clipped.min() > 0.8 * eps / 9  # renormalising moves the floor a little
