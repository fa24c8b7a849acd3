"""`pipeline submit <comp>`: upload `submissions/<comp>.csv` to Kaggle and record its score beside the CV score.

Not a DVC stage (it talks to Kaggle, and each upload counts against a daily limit): run it when a submission is
worth a leaderboard look. The file is checked against `sample_submission.csv` before anything is sent. Every
upload appends a row to `submissions/scores.csv`: time, competition, git commit (and DVC experiment, if HEAD is
one), CV log loss from `metrics/<comp>.json`, public and private score, status, message and Kaggle's ref.
`pipeline submissions <comp>` lists Kaggle's submissions joined with those rows.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline import kaggle_api
from pipeline.competitions import get_competition
from pipeline.io import read_json, write_csv
from pipeline.paths import Paths
from pipeline.submission import read_sample, validate_submission

SCORES_COLUMNS = ["time", "competition", "commit", "experiment", "cv_logloss", "public_score", "private_score",
                  "status", "message", "ref"]
DONE = ("COMPLETE", "ERROR")


def scores_path(root: Path) -> Path:
    return root / "submissions" / "scores.csv"


def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def provenance(root: Path) -> tuple[str, str]:
    """The git commit (marked '-dirty' when params or the lock file differ from it) and DVC experiment names."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit and _git(root, "status", "--porcelain", "--", "params.yaml", "dvc.lock", "dvc.yaml", "pipeline"):
        commit += "-dirty"
    refs = _git(root, "for-each-ref", "--points-at", "HEAD", "--format=%(refname)", "refs/exps")
    return commit, " ".join(ref.rsplit("/", 1)[-1] for ref in refs.split())


def _status(submission) -> str:
    """The client's status enum (e.g. SubmissionStatus.COMPLETE) as its bare name."""
    return str(getattr(submission, "status", "")).rsplit(".", 1)[-1].upper()


def checked_submission(comp_name: str, root: Path) -> Path:
    """The competition's submission file, validated against sample_submission.csv."""
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root)
    for needed in (paths.submission, paths.raw / "sample_submission.csv"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} does not exist; create it with `dvc repro ensemble@{comp_name}`.")
    sub = pd.read_csv(paths.submission, dtype={comp.id_column: str})
    validate_submission(comp, sub, read_sample(comp, paths.raw), str(paths.submission))
    return paths.submission


def wait_for_score(slug: str, ref: str, poll_seconds: float, timeout: float):
    """Poll Kaggle until submission `ref` is scored or failed; None if `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [s for s in kaggle_api.list_submissions(slug) if str(getattr(s, "ref", "")) == ref]
        if mine and _status(mine[0]) in DONE:
            return mine[0]
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_seconds)


def run(comp_name: str, message: str | None = None, wait: bool = False, root: Path = Path("."),
        poll_seconds: float = 10.0, timeout: float = 1800.0) -> dict:
    """Validate, upload, optionally wait for the score, and append the row to submissions/scores.csv."""
    comp = get_competition(comp_name)
    path = checked_submission(comp_name, root)
    metrics_file = Paths(comp_name, root).metrics
    cv = read_json(metrics_file)["logloss"] if metrics_file.is_file() else None
    commit, experiment = provenance(root)
    if message is None:
        message = f"{comp_name} cv_logloss={cv:.5f} {commit[:12]}" if cv is not None else f"{comp_name} {commit[:12]}"
    ref = kaggle_api.submit_file(comp.slug, path, message)
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "competition": comp_name,
           "commit": commit, "experiment": experiment, "cv_logloss": cv, "public_score": None,
           "private_score": None, "status": "PENDING", "message": message, "ref": ref}
    failure = None
    if wait:
        scored = wait_for_score(comp.slug, ref, poll_seconds, timeout)
        if scored is None:
            row["status"] = "TIMEOUT"
        else:
            row.update(status=_status(scored), public_score=getattr(scored, "public_score", None),
                       private_score=getattr(scored, "private_score", None))
            if row["status"] == "ERROR":
                failure = getattr(scored, "error_description", "") or "no reason given"
    record(root, row)
    if failure:
        raise kaggle_api.KaggleError(f"Kaggle could not score submission {ref} of '{comp.slug}': {failure}")
    return row


def record(root: Path, row: dict) -> None:
    """Append `row` to submissions/scores.csv (rewritten whole, atomically)."""
    path = scores_path(root)
    old = pd.read_csv(path, dtype=str) if path.is_file() else pd.DataFrame(columns=SCORES_COLUMNS)
    write_csv(path, pd.concat([old, pd.DataFrame([row], columns=SCORES_COLUMNS).astype(str)], ignore_index=True))


def leaderboard(comp_name: str, root: Path = Path(".")) -> pd.DataFrame:
    """Kaggle's submissions for the competition, with our recorded CV score and commit beside each."""
    comp = get_competition(comp_name)
    rows = [{"ref": str(getattr(s, "ref", "")), "date": str(getattr(s, "date", "")),
             "description": getattr(s, "description", ""), "status": _status(s),
             "public_score": getattr(s, "public_score", None), "private_score": getattr(s, "private_score", None)}
            for s in kaggle_api.list_submissions(comp.slug) if s is not None]
    board = pd.DataFrame(rows, columns=["ref", "date", "description", "status", "public_score", "private_score"])
    path = scores_path(root)
    if path.is_file():
        ours = pd.read_csv(path, dtype=str)
        ours = ours[ours["competition"] == comp_name][["ref", "cv_logloss", "commit"]].drop_duplicates("ref", keep="last")
        board = board.merge(ours, on="ref", how="left")
    else:
        board[["cv_logloss", "commit"]] = None
    return board
