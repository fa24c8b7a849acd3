"""`pipeline compare <comp> [EXP ...]`: experiments against a baseline, fold by fold and group by group, with
the noise that tells a real gain from luck.

Each run's per-fold and per-group (State Farm: per-driver) cross-fitted scores live in `metrics/<comp>/cv.json`,
committed to git with the top-level metrics (DVC `cache: false`), so any commit, branch, tag or DVC experiment
can be read in any clone; `workspace` is the files on disk. A difference is paired: the same fold (or driver)
scored by both runs. Its mean over folds, spread, standard error and the number of folds that agree in sign say
whether it is more than noise. Kaggle scores recorded by `pipeline submit` in `submissions/scores.csv` are shown
beside the CV score of the same commit, and `reports/<comp>/cv_vs_leaderboard.png` draws CV against the public
leaderboard over every recorded submission.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.commands.leaderboard import plot_cv_vs_leaderboard, submissions
from pipeline.core.competitions import get_competition
from pipeline.core.errors import ConfigError
from pipeline.core.gitinfo import read_json_at
from pipeline.core.machine import describe
from pipeline.core.paths import Paths
from pipeline.scoring.metrics import HIGHER_IS_BETTER

WORKSPACE = "workspace"


@dataclass(frozen=True)
class Run:
    """One run's scores: its name, the git commit it was read from (None for the workspace) and cv.json."""

    name: str
    commit: str | None
    cv: dict
    metrics: dict


def resolve(root: Path, rev: str) -> str:
    """A git commit, branch, tag or DVC experiment name -> the commit's sha."""
    from dvc.scm import RevError, SCMError, resolve_rev
    from scmrepo.exceptions import SCMError as GitError
    from scmrepo.git import Git

    try:
        git = Git(str(root))
    except GitError:
        raise ConfigError(f"{root.resolve()} is not in a git repository; `pipeline compare` reads each run's "
                          "committed metrics from git. Run it in the project's clone (or `git init` there and commit "
                          "a run's dvc.lock and metrics/ as the baseline).") from None
    try:
        return resolve_rev(git, rev)
    except (RevError, SCMError, GitError) as e:
        raise ConfigError(f"cannot find revision {rev!r} ({e}); give a git commit, branch or tag, a DVC experiment "
                          f"name from `dvc exp show`, or {WORKSPACE!r} for the files on disk.") from None


def load_run(root: Path, comp_name: str, rev: str) -> Run:
    paths = Paths(comp_name, root)
    commit = None if rev == WORKSPACE else resolve(root, rev)
    return Run(rev, commit, read_json_at(root, commit, paths.cv, rev),
               read_json_at(root, commit, paths.metrics, rev))


def fold_verdict(diffs: np.ndarray, weights: np.ndarray, repeats: int = 1, higher_is_better: bool = False) -> str:
    """The fold-paired change of the score (log loss unless said otherwise), and whether it stands out from the
    noise.

    Cross-validation's fold differences are correlated (each pair of training sets shares most rows), so the
    naive standard error is too small: the corrected resampled t-test (Nadeau & Bengio, 2003) scales the variance
    by 1/k + 1/(k - 1) instead of 1/k, and compares with Student's t at 95% (two-sided) on k - 1 degrees of
    freedom. With `repeats` k-fold runs (other seeds, so other folds) the diffs hold r*k folds, and the corrected
    repeated k-fold test (Bouckaert & Frank, 2004) uses 1/(r k) + 1/(k - 1) on r k - 1 degrees of freedom. The
    test takes the plain mean of the fold differences, as those tests do (a row-weighted mean over an unweighted
    spread would let one big fold pass for a consistent change); the change of the overall, row-weighted score is
    shown beside it.
    """
    n = len(diffs)
    overall = float(np.average(diffs, weights=weights))
    counts = f"lower on {int((diffs < 0).sum())}/{n} folds, higher on {int((diffs > 0).sum())}/{n}"
    if not np.any(diffs):
        return f"identical on every fold ({counts})"
    test = paired_test(diffs, repeats, higher_is_better)
    if test["t"] is None:
        return f"change {test['mean']:+.4f} on a single fold: no spread to judge it by"
    if test["verdict"] != "noise":
        judged = f"likely {test['verdict']}: {test['t']:.1f} corrected standard errors from zero"
    else:
        judged = (f"not distinguishable from noise: {test['t']:.1f} corrected standard errors from zero, "
                  f"{test['needed']:.1f} needed; repeat with other seeds (`dvc exp run -S seed=...`) before deciding")
    return (f"mean fold change {test['mean']:+.4f} (overall, row-weighted: {overall:+.4f}), spread (sd) "
            f"{test['sd']:.4f}, corrected standard error {test['se']:.4f}; {counts} -> {judged}")


def paired_test(diffs: np.ndarray, repeats: int = 1, higher_is_better: bool = False) -> dict:
    """`fold_verdict`'s numbers: mean, sd, corrected se, t, the t needed, and the verdict (better, worse, noise);
    t is None with fewer than two folds."""
    n = len(diffs)
    k = n // repeats
    mean = float(np.mean(diffs))
    if k < 2:
        return {"mean": mean, "sd": None, "se": None, "t": None, "needed": None, "verdict": "noise"}
    sd = float(diffs.std(ddof=1))
    se = sd * math.sqrt(1 / n + 1 / (k - 1))
    t = abs(mean) / se if se > 0 else (math.inf if mean else 0.0)
    needed = float(stats.t.ppf(0.975, n - 1))
    verdict = "noise" if t < needed else ("better" if (mean > 0) == higher_is_better else "worse")
    return {"mean": mean, "sd": sd, "se": se, "t": t, "needed": needed, "verdict": verdict}


def group_counts(diffs: np.ndarray, weights: np.ndarray, noun: str) -> str:
    """Per group, only a description: a fold's groups share one model, so they are not independent samples."""
    return (f"mean change {np.average(diffs, weights=weights):+.4f}; lower on {int((diffs < 0).sum())}/{len(diffs)} "
            f"{noun}s, higher on {int((diffs > 0).sum())}/{len(diffs)} (does the change help most {noun}s, or one?)")


def same_folds(a: Run, b: Run) -> bool:
    """Whether the folds both runs scored hold the same rows (a changed seed or fold count gives other folds; a
    quick run scores fewer of the same folds)."""
    fa, fb = a.cv["folds"], b.cv["folds"]
    common = set(fa) & set(fb)
    return bool(common) and all(fa[k].get("rows_md5") == fb[k].get("rows_md5") is not None for k in common)


def paired_table(base: Run, runs: list[Run], key: str, extra: tuple[str, ...], label: str,
                 score: str = "logloss") -> pd.DataFrame:
    """Rows of cv.json's `key` (folds or groups) present in every run with a `score` (the competition's metric):
    each run's score, and its change against the baseline."""
    def value(r: Run, k: str) -> float:
        v = r.cv[key][k].get(score)
        return math.nan if v is None else float(v)  # e.g. ROC AUC of a group of one class

    common = [k for k in base.cv[key] if all(k in r.cv[key] for r in runs)]
    rows = []
    for k in common:
        row = {label: k, **{c: base.cv[key][k][c] for c in extra}, base.name: value(base, k)}
        for r in runs:
            row[r.name] = value(r, k)
            row[f"change {r.name}"] = value(r, k) - value(base, k)
        rows.append(row)
    return pd.DataFrame(rows).dropna() if rows else pd.DataFrame(rows)


def _wrapped(line: str) -> str:
    """A verdict folded to the terminal's width, continued under its text."""
    return textwrap.fill(line, shutil.get_terminal_size((100, 24)).columns, subsequent_indent="    ")


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(df: pd.DataFrame) -> str:
    """Log losses to 4 decimals, changes with their sign."""
    formats = {c: ("{:+.4f}" if c.startswith("change ") else "{:.4f}").format
               for c in df.columns if df[c].dtype.kind == "f"}
    return df.to_string(index=False, formatters=formats)


def _made_by(row, runs: list[Run]) -> str:
    """The compared run a recorded submission came from: a clean commit is that commit's run; one made from
    uncommitted changes (`-dirty`, e.g. an experiment applied to the workspace) only the run with its CV score."""
    commit = str(row["commit"])
    for r in runs:
        if r.commit is not None and commit == r.commit:
            return r.name
    for r in runs:
        cv = r.metrics.get("logloss")
        if commit.endswith("-dirty") and cv is not None and abs(row["cv_logloss"] - cv) < 5e-7:
            return r.name
    return ""


def quick_note(base: Run, run: Run) -> str | None:
    """Two runs scored with other quick settings (folds, subsample) cannot be told apart from their change."""
    a, b = (r.cv.get("run", {}).get("subsample", 1.0) for r in (base, run))
    if a == b:
        return None
    return (f"Note: {base.name} learnt from {a:.0%} of each fold's training images, {run.name} from {b:.0%}: "
            f"the change includes that. Make the baseline the same way, e.g. `dvc exp run -S subsample={b:g}` "
            f"{'with the same folds ' if len(run.cv.get('folds', {})) < len(base.cv.get('folds', {})) else ''}"
            "on the baseline commit.")


def machine_note(base: Run, run: Run) -> str | None:
    """Said when two runs' members were computed on other machines (or one does not say where): the same params
    give other numbers on another CPU or GPU, which would pass for the effect of the change."""
    ours, theirs = base.cv.get("environments"), run.cv.get("environments")
    if ours and ours == theirs:
        return None
    if not ours or not theirs:
        where = f"{(base if not ours else run).name} does not record the machine it ran on (an older version made it)"
    else:
        where = (f"{base.name} ran on {'; '.join(map(describe, ours))}, {run.name} on "
                 f"{'; '.join(map(describe, theirs))}")
    return (f"\nNote: {where}. The same params give other numbers on another machine, so part of each change below "
            f"may be the machine's. Make the baseline on this machine: check it out, `dvc repro`, commit dvc.lock "
            "and metrics/.")


def run(comp_name: str, experiments: list[str], baseline: str = "HEAD", root: Path = Path(".")) -> str:
    """The comparison as text (and the CV-vs-leaderboard picture when submissions were scored)."""
    comp = get_competition(comp_name)
    experiments = experiments or [WORKSPACE]
    if len(set([baseline, *experiments])) <= len(experiments):
        raise ConfigError(f"compare needs distinct runs; got baseline {baseline!r} and {experiments}")
    for rev in [baseline, *experiments]:  # a mistyped name is reported before anything is read
        if rev != WORKSPACE:
            resolve(root, rev)
    base = load_run(root, comp_name, baseline)
    runs = [load_run(root, comp_name, e) for e in experiments]
    score, higher = comp.metric, HIGHER_IS_BETTER[comp.metric]
    name = "log loss" if score == "logloss" else score
    out = [f"{comp_name}: cross-validated {name} ({'higher' if higher else 'lower'} is better) against baseline "
           f"{baseline!r}"]
    overall = pd.DataFrame([{"run": r.name, **({} if score == "logloss" else {score: _num(r.metrics.get(score))}),
                             "log loss": _num(r.metrics.get("logloss")),
                             "accuracy": _num(r.metrics.get("accuracy")),
                             f"demo test {name}": _num(r.metrics.get(f"demo_test_{score}")),
                             "chosen": f"{r.metrics.get('member')}+{r.metrics.get('calibration')}"}
                            for r in [base, *runs]])
    out.append(overall.to_string(index=False))
    out += ["\n" + _wrapped(note.lstrip("\n")) for r in runs for note in (machine_note(base, r), quick_note(base, r))
            if note]

    paired = [r for r in runs if same_folds(base, r)]
    for r in runs:
        if r not in paired:
            out.append(f"\n{r.name}'s folds hold other rows than {base.name}'s (the seed or the folds changed): its "
                       "per-fold scores cannot be paired; compare the overall score, or per group below.")
    if paired:
        folds = paired_table(base, paired, "folds", ("rows",), "fold", score)
        if folds.empty:
            out.append(f"\nNo fold has a {name} in every run (outputs of an older version?): compare the overall "
                       "scores above.")
            paired = []
    if paired:
        out.append("\nPer fold (each change paired on the same rows):")
        out.append(_table(folds))
        weights = folds["rows"].to_numpy(dtype=float)
        for r in paired:
            out.append(_wrapped(f"  {r.name}: " + fold_verdict(folds[f"change {r.name}"].to_numpy(), weights,
                                                                higher_is_better=higher)))

    if comp.group_column and base.cv.get("groups"):
        noun = comp.group_noun
        groups = paired_table(base, runs, "groups", ("fold", "rows"), noun, score)
        out.append(f"\nPer {noun} ({comp.group_column}; each {noun}'s rows are scored by the fold that held them out):")
        if len(groups):
            out.append(_table(groups))
            for r in runs:
                out.append(_wrapped(f"  {r.name}: " + group_counts(groups[f"change {r.name}"].to_numpy(),
                                                                    groups["rows"].to_numpy(dtype=float), noun)))
        else:
            out.append(f"(no {noun} in common)")

    scores = submissions(root, comp_name)
    if len(scores):
        shown = scores.assign(run=[_made_by(row, [base, *runs]) for _, row in scores.iterrows()])
        out.append("\nKaggle submissions and local scores (submissions/scores.csv; `pipeline score` rows: local_score); "
                   "`run` names the compared run that made it:")
        out.append(shown[["run", "time", "commit", "experiment", "cv_logloss", "cv", "public_score", "private_score",
                          "local_score"]]
                   .assign(commit=shown["commit"].str.replace(r"^(\w{12})\w*", r"\1", regex=True))
                   .astype(object).fillna("").to_string(index=False))
        picture = plot_cv_vs_leaderboard(scores, comp_name, Paths(comp_name, root).reports / "cv_vs_leaderboard.png")
        if picture is not None:
            scored = scores.dropna(subset=["cv", "public_score"])
            corr = (f"; correlation {scored['cv'].corr(scored['public_score']):.2f}" if len(scored) >= 3 else "")
            out.append(f"CV against public leaderboard over {len(scored)} scored submissions{corr}: {picture}")
    return "\n".join(out)
