"""`pipeline score <comp> <answers.csv>`: the current submission scored against a local answer key.

For a competitor's own held-out split, the real-photo recipe's secret labels, or the demo's: the competition's
metric beside the CV score, recorded in `submissions/scores.csv` with status LOCAL (never as a leaderboard score,
and `pipeline submissions` leaves such rows out). Not a DVC stage: nothing downstream depends on it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline.commands.submit import read_checked_submission, record
from pipeline.core.gitinfo import provenance
from pipeline.core.competitions import get_competition
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json
from pipeline.core.paths import Paths
from pipeline.scoring.submission import score_answers


class AnswersError(PipelineError):
    """The answer key cannot score this competition's submission."""


def read_answers(comp_name: str, path: Path) -> pd.Series:
    """The answer key as labels indexed by id (strings): columns `id` (or the competition's id column) and
    `label` (or `Label`, or a label submission's own column: Kaggle's layout, e.g. Plant Seedlings' `file,species`),
    one row per answered test image."""
    comp = get_competition(comp_name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a CSV of the test ids and their true labels.")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    id_col = next((c for c in ("id", comp.id_column) if c in frame), None)
    own = comp.submission_columns if comp.submission == "label" else ()
    label_col = next((c for c in ("label", "Label", *own) if c in frame), None)
    if id_col is None or label_col is None:
        labels = " or ".join(repr(c) for c in dict.fromkeys(("label", *own)))
        raise AnswersError(f"{path}: expected columns 'id' (or {comp.id_column!r}) and {labels}; found "
                           f"{list(frame.columns)}. Write one row per test image: its id and its true class.")
    answers = frame.set_index(id_col)[label_col]
    unknown = sorted(set(answers) - set(comp.classes))
    if unknown:
        raise AnswersError(f"{path}: {len(unknown)} label(s) are not {comp.title} classes ({', '.join(unknown[:5])}); "
                           f"expected one of {', '.join(comp.classes)}.")
    if answers.index.duplicated().any():
        raise AnswersError(f"{path}: id {answers.index[answers.index.duplicated()][0]!r} is answered twice.")
    return answers


def run(comp_name: str, answers_path: Path, root: Path = Path(".")) -> dict:
    """Score the submission on the answered rows, record it, and return the row written."""
    comp = get_competition(comp_name)
    path, sub = read_checked_submission(comp_name, root)
    answers = read_answers(comp_name, answers_path)
    stray = sorted(set(answers.index) - set(sub[comp.id_column].astype(str)))
    if stray:
        raise AnswersError(f"{answers_path}: {len(stray)} answered id(s) are not in {path} (e.g. {stray[0]!r}); an "
                           "answer key lists test images of this submission.")
    local = score_answers(comp, sub, answers)
    metrics = read_json(Paths(comp_name, root).metrics) if Paths(comp_name, root).metrics.is_file() else {}
    commit, experiment = provenance(root)
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "competition": comp_name,
           "commit": commit, "experiment": experiment, "cv_logloss": metrics.get("logloss"), "public_score": None,
           "private_score": None, "status": "LOCAL", "message": f"local answers {answers_path} ({local['rows']} rows)",
           "ref": None, "metric": comp.metric, "cv_score": metrics.get(comp.metric),
           "local_score": local[comp.metric]}
    record(root, row)
    return {**row, **{f"local_{k}": v for k, v in local.items()}, "submission_rows": len(sub)}


def describe(comp_name: str, r: dict) -> str:
    """One line: the local score beside CV, with its noise where it has one."""
    name = r["metric"]
    noise = f" +- {r['local_logloss_se']:.4f}" if name == "logloss" and "local_logloss_se" in r else ""
    part = "" if r["local_rows"] == r["submission_rows"] else f" ({r['local_rows']} of {r['submission_rows']} rows)"
    cv = "no CV score (run dvc repro)" if r["cv_score"] is None else f"CV {name} {r['cv_score']:.4f}"
    extra = f", accuracy {r['local_accuracy']:.4f}" if name != "accuracy" else ""
    return (f"{comp_name}: local {name} {r['local_score']:.4f}{noise}{extra} on your answers{part}; {cv}. "
            "Recorded in submissions/scores.csv as LOCAL (not a leaderboard score).")
