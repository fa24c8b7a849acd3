"""`pipeline compare <comp> [EXP ...] [-b BASE ...]`: experiments against a baseline, fold by fold, member by
member and group by group, with the noise that tells a real gain from luck.

Each run's per-fold and per-group (State Farm: per-driver) cross-fitted scores live in `metrics/<comp>/cv.json`,
committed to git with the top-level metrics (DVC `cache: false`), so any commit, branch, tag or DVC experiment
can be read in any clone; `workspace` is the files on disk. A difference is paired: the same fold (or driver)
scored by both runs, only like with like (`pipeline.scoring.pairing`: the same split, the same scored folds, or
said why not). Its mean over folds, spread, corrected standard error and the number of folds that agree in sign
say whether it is more than noise. Several baselines (`-b BASE-s1 BASE-s2`) make one comparison over repeated
seeds (`pipeline.commands.seeds`). Kaggle scores recorded by `pipeline submit` in `submissions/scores.csv` are
shown beside the CV score of the same commit, and `reports/<comp>/cv_vs_leaderboard.png` draws CV against the
public leaderboard over every recorded submission.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pandas as pd

from pipeline.commands.leaderboard import plot_cv_vs_leaderboard, submissions
from pipeline.core.competitions import get_competition
from pipeline.core.errors import ConfigError
from pipeline.core.gitinfo import read_json_at
from pipeline.core.machine import describe
from pipeline.core.paths import Paths
from pipeline.scoring.metrics import HIGHER_IS_BETTER
from pipeline.scoring.pairing import (
    Run,
    fold_verdict,
    gpu_note,
    group_counts,
    member_changes,
    paired_table,
    procedure_note,
    quick_note,
    same_folds,
    same_procedure,
    seeds_advice,
    settings,
    unpaired,
    unshared_members,
)

__all__ = ["Run", "fold_verdict", "load_run", "paired_table", "quick_note", "resolve", "run", "same_folds"]

WORKSPACE = "workspace"


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
    """A revision's (or the workspace's) cv.json and metrics of one competition."""
    paths = Paths(comp_name, root)
    commit = None if rev == WORKSPACE else resolve(root, rev)
    return Run(rev, commit, read_json_at(root, commit, paths.cv, rev),
               read_json_at(root, commit, paths.metrics, rev))


def wrapped(line: str) -> str:
    """A verdict folded to the terminal's width, continued under its text."""
    return textwrap.fill(line, shutil.get_terminal_size((100, 24)).columns, subsequent_indent="    ")


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def table(df: pd.DataFrame) -> str:
    """Scores to 4 decimals, changes with their sign."""
    formats = {c: ("{:+.4f}" if c.startswith("change") else "{:.4f}").format
               for c in df.columns if df[c].dtype.kind == "f"}
    return df.to_string(index=False, formatters=formats)


def overall(runs: list[Run], score: str, name: str) -> pd.DataFrame:
    """Each run's overall scores and the ensemble it chose."""
    return pd.DataFrame([{"run": r.name, **({} if score == "logloss" else {score: _num(r.metrics.get(score))}),
                          "log loss": _num(r.metrics.get("logloss")), "accuracy": _num(r.metrics.get("accuracy")),
                          f"demo test {name}": _num(r.demo_test(score)), "chosen": r.chosen} for r in runs])


def member_block(pairs: list[tuple[Run, Run]], advice: str | None = None) -> list[str]:
    """Each member both sides have (`<model>/<stage>`), its own log loss before the ensemble, averaged over the
    paired folds; with the corrected test when `advice` is given (the ensembles themselves could not be paired)."""
    changes = member_changes(pairs)
    if changes.empty:
        return []
    by_member = changes.groupby("member", sort=False)
    one = len(pairs) == 1
    base, run = (pairs[0][0].name, pairs[0][1].name) if one else ("baseline", "experiment")
    shown = (by_member[["base", "run", "change"]].mean().reset_index()
             .rename(columns={"base": base, "run": run, "change": "change (mean)"})
             .assign(folds=by_member.size().to_numpy()))
    out = ["\n" + wrapped(f"Per member, {run} against {base} (each network's own out-of-fold log loss before the "
                          "ensemble, mean over the paired folds; members both have):"), table(shown)]
    if advice is not None:
        fold_count = settings(pairs[0][0])["fold_count"]
        out += [wrapped(f"  {m}: " + fold_verdict(g["change"].to_numpy(), g["rows"].to_numpy(dtype=float),
                                                   fold_count, advice=advice)) for m, g in by_member]
    return out


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


def run(comp_name: str, experiments: list[str], baseline: str | list[str] = "HEAD", root: Path = Path(".")) -> str:
    """The comparison as text (and the CV-vs-leaderboard picture when submissions were scored). Several
    baselines: one change over repeated seeds, each experiment paired with the baseline of its seed."""
    baselines = [baseline] if isinstance(baseline, str) else list(baseline)
    comp = get_competition(comp_name)
    if len(baselines) > 1 and not experiments:
        raise ConfigError(f"compare with several baselines ({' '.join(baselines)}) pairs each with the experiment of "
                          f"its seed; none was named. Put the change's runs before -b: `pipeline compare {comp_name} "
                          "CHANGE-s1 CHANGE-s2 -b BASE-s1 BASE-s2`.")
    experiments = experiments or [WORKSPACE]
    named = [*baselines, *experiments]
    if len(set(named)) < len(named):
        raise ConfigError(f"compare needs distinct runs; got baseline {' '.join(baselines)} and {experiments}")
    for rev in named:  # a mistyped name is reported before anything is read
        if rev != WORKSPACE:
            resolve(root, rev)
    if len(baselines) > 1:
        from pipeline.commands import seeds

        return seeds.run(comp_name, experiments, baselines, root)
    base = load_run(root, comp_name, baselines[0])
    runs = [load_run(root, comp_name, e) for e in experiments]
    score, higher = comp.metric, HIGHER_IS_BETTER[comp.metric]
    name = "log loss" if score == "logloss" else score
    out = [f"{comp_name}: cross-validated {name} ({'higher' if higher else 'lower'} is better) against baseline "
           f"{base.name!r}", overall([base, *runs], score, name).to_string(index=False)]
    out += ["\n" + wrapped(note.lstrip("\n")) for r in runs
            for note in (machine_note(base, r), quick_note(base, r), unpaired(base, r) or procedure_note(base, r),
                         unshared_members(base, r)) if note]
    out += ["\n" + wrapped(note) for note in [gpu_note([base, *runs])] if note]

    split = [r for r in runs if unpaired(base, r) is None]  # the same rows in the folds both scored
    paired = [r for r in split if procedure_note(base, r) is None]  # and the same folds: ensembles comparable
    folds = paired_table(base, paired, "folds", ("rows",), "fold", score) if paired else pd.DataFrame()
    if paired and folds.empty:
        out.append(f"\nNo fold has a {name} in every run (outputs of an older version?): compare the overall "
                   "scores above.")
    elif paired:
        out += ["\nPer fold (each change paired on the same rows):", table(folds)]
        weights = folds["rows"].to_numpy(dtype=float)
        fold_count = settings(base)["fold_count"]
        out += [wrapped(f"  {r.name}: " + fold_verdict(folds[f"change {r.name}"].to_numpy(), weights, fold_count,
                                                        higher, seeds_advice(comp_name))) for r in paired]
    for r in split:
        out += member_block([(base, r)], None if r in paired else seeds_advice(comp_name))

    grouped = [r for r in runs if same_procedure(base, r)]  # a group's score is its fold's ensemble's
    if comp.group_column and base.cv.get("groups") and grouped:
        noun = comp.group_noun
        groups = paired_table(base, grouped, "groups", ("fold", "rows"), noun, score)
        out.append(f"\nPer {noun} ({comp.group_column}; each {noun}'s rows are scored by the fold that held them out):")
        if len(groups):
            out.append(table(groups))
            out += [wrapped(f"  {r.name}: " + group_counts(groups[f"change {r.name}"].to_numpy(),
                                                            groups["rows"].to_numpy(dtype=float), noun))
                    for r in grouped]
        else:
            out.append(f"(no {noun} in common)")
    out += ["\n" + wrapped(f"{r.name} is not compared per {comp.group_noun}: its ensemble was chosen on other folds "
                           f"than {base.name}'s.") for r in runs if comp.group_column and r not in grouped]
    return "\n".join(out + submissions_block(root, comp_name, [base, *runs]))


def submissions_block(root: Path, comp_name: str, runs: list[Run]) -> list[str]:
    """Recorded Kaggle scores beside the compared runs that made them, and the CV-vs-leaderboard picture."""
    scores = submissions(root, comp_name)
    if not len(scores):
        return []
    shown = scores.assign(run=[_made_by(row, runs) for _, row in scores.iterrows()])
    out = ["\nKaggle submissions and local scores (submissions/scores.csv; `pipeline score` rows: local_score); "
           "`run` names the compared run that made it:",
           shown[["run", "time", "commit", "experiment", "cv_logloss", "cv", "public_score", "private_score",
                  "local_score"]]
           .assign(commit=shown["commit"].str.replace(r"^(\w{12})\w*", r"\1", regex=True))
           .astype(object).fillna("").to_string(index=False)]
    picture = plot_cv_vs_leaderboard(scores, comp_name, Paths(comp_name, root).reports / "cv_vs_leaderboard.png")
    if picture is not None:
        scored = scores.dropna(subset=["cv", "public_score"])
        corr = f"; correlation {scored['cv'].corr(scored['public_score']):.2f}" if len(scored) >= 3 else ""
        out.append(f"CV against public leaderboard over {len(scored)} scored submissions{corr}: {picture}")
    return out
