"""`pipeline submit <comp>`: upload `submissions/<comp>/submission.csv` to Kaggle and record its score beside the CV
score; for a code competition (its record says `submit: notebook`), send the notebook that makes it instead.

Not a DVC stage (it talks to Kaggle, and each upload counts against a daily limit): run it when a submission is
worth a leaderboard look. The file is checked against `sample_submission.csv` before anything is sent. Every
upload appends a row to `submissions/scores.csv`: time, competition, git commit (and DVC experiment, if HEAD is
one), CV log loss from `metrics/<comp>.json`, public and private score, status, message and Kaggle's ref.
`pipeline submissions <comp>` lists Kaggle's submissions joined with those rows.

Each upload spends one of the day's few submissions, so a file that cannot be what the user means is refused
before anything is sent (unless `--force`): one made from the demo data or another archive than the real
competition's (its row count is not the real test set's), and one older than the params, code or data that
produced it (`dvc status` of the ensemble stage and everything upstream is not clean).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline.core.competitions import get_competition
from pipeline.core.errors import PipelineError
from pipeline.core.gitinfo import provenance
from pipeline.core.io import read_json, write_csv
from pipeline.core.paths import EXTRACTED, Paths
from pipeline.data import kaggle_api
from pipeline.scoring.runs import Run
from pipeline.scoring.submission import read_sample, validate_submission

SCORES_COLUMNS = ["time", "competition", "commit", "experiment", "cv_logloss", "public_score", "private_score",
                  "status", "message", "ref", "metric", "cv_score", "local_score", "notebook"]
"""`cv_score` is the CV score in the competition's metric (what Kaggle's public score measures); `cv_logloss`
the CV log loss, for every competition; `local_score` a `pipeline score` against local answers (status LOCAL);
`notebook` a code competition's notebook, `owner/slug/version`, whose output was submitted."""
DONE = ("COMPLETE", "ERROR")


def scores_path(root: Path) -> Path:
    return root / "submissions" / "scores.csv"


def _status(submission) -> str:
    """The client's status enum (e.g. SubmissionStatus.COMPLETE) as its bare name."""
    return str(getattr(submission, "status", "")).rsplit(".", 1)[-1].upper()


def checked_submission(comp_name: str, root: Path) -> Path:
    """The competition's submission file, validated against sample_submission.csv."""
    return read_checked_submission(comp_name, root)[0]


def read_checked_submission(comp_name: str, root: Path) -> tuple[Path, pd.DataFrame]:
    """The competition's submission file and its frame, validated against sample_submission.csv."""
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root)
    quick = read_json(paths.metrics).get("quick") if paths.metrics.is_file() else None
    if quick and not paths.submission.is_file():
        raise FileNotFoundError(f"{paths.submission} does not exist: the last ensemble was a quick run ({quick}), "
                                "which writes no submission (its models saw part of the data). Run the full folds "
                                f"(params.yaml's folds and subsample as shipped): `dvc repro ensemble@{comp_name}`.")
    for needed in (paths.submission, paths.raw / EXTRACTED / "sample_submission.csv"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} does not exist; create it with `dvc repro ensemble@{comp_name}`.")
    # ids and labels as written, never as NaN or numbers: an id or a class may be spelt 'NA', 'null' or '01'; a
    # probability stays a number, and an empty one fails the validation as missing
    text = [comp.id_column, *(comp.submission_columns if comp.submission == "label" else [])]
    sub = pd.read_csv(paths.submission, dtype=dict.fromkeys(text, str), keep_default_na=False)
    validate_submission(comp, sub, read_sample(comp, paths.raw), str(paths.submission))
    return paths.submission, sub


class SubmitRefused(PipelineError):
    """The submission is valid but is not one to spend a Kaggle submission on."""


def source_problems(comp_name: str, root: Path) -> list[str]:
    """Why the submission was not made from the real competition archive (empty when it was), from what the
    ensemble recorded beside it in metrics/<comp>/cv.json (an older run: in metrics/<comp>.json)."""
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root)
    run = Run.on_disk(comp_name, root)
    source, quick = run.recorded("source"), run.recorded("quick")
    if source is None and (paths.raw / "summary.json").is_file():
        source = read_json(paths.raw / "summary.json")["source"]  # what download fetched (metrics of an older run)
    source = source or "unknown: neither metrics/<comp>/cv.json nor the download's summary says"
    rows = None
    if paths.submission.is_file():
        with open(paths.submission) as f:
            rows = sum(1 for _ in f) - 1
    problems = []
    if source == "demo":
        problems.append(f"it was made from the built-in demo data ({comp_name}.data.source: demo in params.yaml); "
                        f"Kaggle would score it as noise. Set {comp_name}.data.source to kaggle or to the path of "
                        f"{comp.slug}.zip and run `dvc repro`")
    if quick:
        problems.append(f"it was made by a quick run ({quick}): its models saw less than the data. Run "
                        "the full folds (params.yaml's folds and subsample as shipped) for a submission")
    if comp.submit == "csv" and comp.test_images is not None and rows not in (None, comp.test_images):
        problems.append(f"it has {rows} rows, but the real competition's test set has {comp.test_images}: it was not "
                        f"made from Kaggle's archive (source: {source})")
    return problems


# Missing files are not changes: a deleted upstream output (or one `dvc gc` took from the cache) says nothing
# about whether the submission is older than its params, code or data.
NOT_CHANGES = ("deleted", "not in cache")


def stale_stages(comp_name: str, root: Path) -> dict[str, list[str]]:
    """Stages behind the submission whose params, code or data changed since they ran, as `dvc repro` would see
    them: the input fingerprints are refreshed first (so an archive or weights file replaced at the same path
    counts), then `dvc status` of the ensemble and everything upstream. Returns stage -> what changed."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from pipeline.core.config import load_params
    from pipeline.stages import inputs

    inputs.run(load_params(Path(root) / "params.yaml"), comp_name, Path(root))
    try:
        with Repo(str(root)) as repo:
            status = repo.status(targets=[f"{Path(root).resolve() / 'dvc.yaml'}:ensemble@{comp_name}"], with_deps=True)
    except DvcException as e:
        raise SubmitRefused(f"cannot tell whether {Paths(comp_name, root).submission} is up to date: `dvc status` "
                            f"failed ({e}). Fix that, or `pipeline submit --force` to send it unchecked.") from None
    stale = {}
    for stage, changes in status.items():
        if stage.rsplit(":", 1)[-1] == "inputs":
            continue  # every competition's check: a change of this one's files shows in its download or features
        what = []
        for change in changes:
            if not isinstance(change, dict):
                if change != "always changed":  # the input checks run on every repro: only real changes count
                    what.append(str(change))
                continue
            for kind in change.values():
                for path, detail in kind.items():
                    if isinstance(detail, dict):
                        what.extend(f"{path}: {key}" for key in detail)
                    elif detail not in NOT_CHANGES:
                        what.append(path)
        if what:
            stale[stage.rsplit(":", 1)[-1]] = what  # the name, without the dvc.yaml path it was looked up by
    return stale


# The pipeline's order, so the stages a change reached first are named first.
ORDER = ("inputs", "download", "folds", "prepare", "features", "head", "finetune", "ensemble")


def refusals(comp_name: str, root: Path) -> list[str]:
    """Every reason not to spend a submission on `submissions/<comp>/submission.csv`."""
    problems = source_problems(comp_name, root)
    stale = stale_stages(comp_name, root)
    if stale:
        first = sorted(stale.items(), key=lambda item: (ORDER.index(item[0].split("@")[0])
                                                        if item[0].split("@")[0] in ORDER else len(ORDER), item[0]))
        shown = "; ".join(f"{stage} ({', '.join(sorted(set(what)))})" for stage, what in first[:4])
        problems.append(f"it is older than the params, code or data that produce it ({len(stale)} stage(s) not up "
                        f"to date: {shown}); run `dvc repro ensemble@{comp_name}` first")
    return problems


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
        poll_seconds: float = 10.0, timeout: float = 1800.0, force: bool = False) -> dict:
    """Validate, refuse what should not be sent (unless `force`), upload (a code competition: publish the dataset,
    push the notebook, wait for its run and submit its output), optionally wait for the score, and append the row
    to submissions/scores.csv."""
    comp = get_competition(comp_name)
    path = checked_submission(comp_name, root)
    problems = [] if force else refusals(comp_name, root)
    if problems:
        raise SubmitRefused(f"{path} was not submitted: " + "; and ".join(problems)
                            + ". Nothing was sent; `pipeline submit --force` sends it anyway.")
    metrics_file = Paths(comp_name, root).metrics
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    cv, cv_score = metrics.get("logloss"), metrics.get(comp.metric)
    commit, experiment = provenance(root)
    if message is None:
        message = (f"{comp_name} cv_{comp.metric}={cv_score:.5f} {commit[:12]}" if cv_score is not None
                   else f"{comp_name} {commit[:12]}")
    notebook = None
    if comp.submit == "notebook":
        ref, notebook = send_notebook(comp_name, message, root, poll_seconds, timeout)
    else:
        ref = kaggle_api.submit_file(comp.slug, path, message)
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "competition": comp_name,
           "commit": commit, "experiment": experiment, "cv_logloss": cv, "public_score": None,
           "private_score": None, "status": "PENDING", "message": message, "ref": ref, "metric": comp.metric,
           "cv_score": cv_score, "notebook": notebook}
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


def send_notebook(comp_name: str, message: str, root: Path, poll_seconds: float, timeout: float,
                  progress=print) -> tuple[str, str]:
    """A code competition's submission: `pipeline notebook` into submissions/<comp>_notebook/, the dataset
    published (created, or a new version), the notebook pushed with the internet off, its run waited for, and
    the version that ran submitted. Returns the submission's ref and the notebook as owner/slug/version."""
    from pipeline.commands import notebook
    from pipeline.data import kaggle_kernels

    comp = get_competition(comp_name)
    made = notebook.run(comp_name, Path(root) / "submissions" / f"{comp_name}_notebook", root=root)
    progress(notebook.describe(made))
    dataset = kaggle_kernels.publish_dataset(made["dataset"], message, poll_seconds, timeout)
    kernel, version = kaggle_kernels.push_kernel(made["kernel"])
    progress(f"dataset {dataset} published; notebook {kernel} version {version} pushed (internet off); its run:")
    status = kaggle_kernels.wait_for_kernel(kernel, poll_seconds, timeout, progress=progress)
    if status != "COMPLETE":
        tail = [line.strip() for line in kaggle_kernels.kernel_log_tail(kernel, 40).splitlines() if line.strip()]
        raise kaggle_api.KaggleError(
            f"the notebook {kernel} version {version} ended {status}; its log ends: "
            f"{' | '.join(tail[-3:]) or '(no log)'}. Read the whole log with `kaggle kernels output {kernel} -p "
            f"<dir>`, fix it, then run `pipeline submit {comp_name}` again (nothing was submitted).")
    ref = kaggle_kernels.submit_code(comp.slug, kernel, version, "submission.csv", message)
    return ref, f"{kernel}/{version}"


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
        if "cv_score" not in ours:  # rows recorded before cv_score existed: their log loss, where that is the metric
            ours["cv_score"] = None
        if comp.metric == "logloss":
            ours["cv_score"] = ours["cv_score"].fillna(ours["cv_logloss"])
        ours = ours[(ours["competition"] == comp_name) & (ours["status"] != "LOCAL")]  # local scores never show
        ours = ours[["ref", "cv_logloss", "cv_score", "commit"]].drop_duplicates(
            "ref", keep="last")
        board = board.merge(ours, on="ref", how="left")
    else:
        board[["cv_logloss", "cv_score", "commit"]] = None
    return board
