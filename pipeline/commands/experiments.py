"""`pipeline compare --all <comp>`: every DVC experiment of the baseline commit, one block each: what it changed
in params.yaml, its CV score, the change against the baseline with its corrected standard error, and the verdict.

`dvc exp show` squeezes every param and metric into one table, which collapses to `…` in a terminal; this lists
only what differs, wrapped to the terminal's width. The verdict is `compare`'s fold-paired corrected t-test.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from pathlib import Path

from pipeline.commands.compare import load_run, resolve
from pipeline.core.competitions import get_competition
from pipeline.core.errors import OutputError
from pipeline.core.gitinfo import changed_params, git, params_at, read_json_at
from pipeline.core.paths import Paths
from pipeline.scoring.metrics import HIGHER_IS_BETTER
from pipeline.scoring.pairing import (
    Run,
    paired_table,
    paired_test,
    procedure_note,
    quick_note,
    seeds_advice,
    settings,
    unpaired,
)


def experiment_refs(root: Path, baseline: str) -> list[tuple[str, str]]:
    """(name, commit) of each DVC experiment whose baseline is commit `baseline`, oldest first (DVC keeps them
    as git refs `refs/exps/<sha[:2]>/<sha[2:]>/<name>`)."""
    listed = git(root, "for-each-ref", "--sort=committerdate", "--format=%(refname) %(objectname)",
                 f"refs/exps/{baseline[:2]}/{baseline[2:]}/") or ""
    return [(ref.rsplit("/", 1)[-1], sha) for ref, sha in (line.split() for line in listed.splitlines())]


def describe(base: Run, run: Run, comp_name: str) -> str:
    """The score, its change over the paired folds, and the verdict, in one line."""
    comp = get_competition(comp_name)
    score, higher = comp.metric, HIGHER_IS_BETTER[comp.metric]
    value = run.metrics.get(score)
    shown = f"CV {score} {'-' if value is None else f'{value:.4f}'}"
    reason = unpaired(base, run) or procedure_note(base, run)
    if reason:
        return f"{shown}; not paired: {reason}"
    folds = paired_table(base, [run], "folds", ("rows",), "fold", score)
    if folds.empty:
        return f"{shown}; no fold scored by both runs"
    test = paired_test(folds[f"change {run.name}"].to_numpy(), settings(base)["fold_count"], higher)
    if test["t"] is None:
        return f"{shown}; change {test['mean']:+.4f} on one fold: no spread to judge it by; {seeds_advice(comp_name)}"
    t = "inf" if math.isinf(test["t"]) else f"{test['t']:.1f}"
    verdict = {"better": "likely better", "worse": "likely worse", "noise": "noise"}[test["verdict"]]
    return (f"{verdict}: {shown}, mean fold change {test['mean']:+.4f}, corrected se {test['se']:.4f} ({t} se, "
            f"{test['needed']:.1f} needed)")


def run(comp_name: str, baseline: str = "HEAD", root: Path = Path("."), width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((100, 24)).columns
    base_sha = resolve(root, baseline)
    paths = Paths(comp_name, root)
    base = load_run(root, comp_name, baseline)
    refs = experiment_refs(root, base_sha)
    score = get_competition(comp_name).metric
    head = (f"{comp_name}: {len(refs)} DVC experiment(s) of {baseline} ({base_sha[:7]}), against its CV {score} "
            f"{base.metrics.get(score, float('nan')):.4f}")
    out = [textwrap.fill(head, width)]
    if not refs:
        out.append(textwrap.fill("No experiments of this commit: `dvc exp run -S <key>=<value>` makes one.", width))
    before = params_at(root, base_sha)
    for name, sha in refs:
        try:
            run_ = Run(name, sha, read_json_at(root, sha, paths.cv, name),
                       read_json_at(root, sha, paths.metrics, name))
        except OutputError as e:  # an experiment without this competition's metrics: say so, list the others
            out.append(f"\n{name} ({sha[:7]}): {e}")
            continue
        out.append(f"\n{name} ({sha[:7]})")
        for line in (describe(base, run_, comp_name), quick_note(base, run_)):
            if line:
                out.append(textwrap.fill(line, width, initial_indent="  ", subsequent_indent="    "))
        changes = changed_params(before, params_at(root, sha)) or ["(no param changed)"]
        out += [textwrap.fill(c, width, initial_indent="  ", subsequent_indent="      ") for c in changes]
    return "\n".join(out)

