"""Stage `summary`: the short table `dvc repro` ends with — every competition's scores and where its files are,
and how long each kind of stage took when it last ran.

Inputs: `metrics/` (written by the ensembles) and `plots/` (by the curves stages), so it runs last and only when
a score or a picture changed; the stage timings come from `logs/stages/`, where every stage records its run.
It writes nothing: the table goes to the terminal.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pandas as pd

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.io import file_md5, read_json
from pipeline.core.paths import Paths
from pipeline.core.stage import logs_dir
from pipeline.scoring.runs import Run

WIDTH = 100  # a terminal's columns the table fits in


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def scores_table(params: Params, root: Path) -> pd.DataFrame:
    rows = []
    for comp in params.competitions:
        paths, run = Paths(comp, root), Run.on_disk(comp, root)
        done = bool(run.metrics)
        metric = run.recorded("metric") or get_competition(comp).metric
        rows.append({
            "competition": comp,
            "metric": metric if done else "-",
            "CV score": _num(run.metrics.get(metric)),
            "CV log loss": _num(run.metrics.get("logloss")),
            "accuracy": _num(run.metrics.get("accuracy")),
            "demo test score": _num(run.demo_test(metric)),
            "chosen": run.chosen if done else "-",
            "source": Path(run.recorded("source") or "-").name,  # a zip's file name: its folder would overflow
            "submission": "yes" if paths.submission.is_file() else "none: quick" if run.recorded("quick") else "(none)",
        })
    return pd.DataFrame(rows)


def stale(params: Params, root: Path) -> dict[str, str]:
    """Competitions whose scores are not what this workspace's models give, and why: after an interrupted run
    `metrics/` holds the committed numbers (another run's) while the ensemble's predictions are missing or a fold's
    predictions are not the ones cv.json's `inputs_md5` says they were scored on. By content, not modification times:
    the README's discard (`git checkout ... metrics && dvc checkout`) rewrites the models after the metrics, unchanged.
    The stage runs inside `dvc repro`, which holds DVC's lock, so it judges by the files themselves."""
    found = {}
    for comp in params.competitions:
        paths = Paths(comp, root)
        if not paths.metrics.is_file():
            continue
        scored = read_json(paths.cv).get("inputs_md5", {}) if paths.cv.is_file() else {}
        changed = [name for name, md5 in scored.items() if not (root / name).is_file() or file_md5(root / name) != md5]
        if not paths.oof.is_file():
            found[comp] = "no out-of-fold predictions beside them (the run that made them is not this workspace's)"
        elif changed:
            found[comp] = f"{changed[0]} is not the one they were scored on (the ensemble has not run since)"
    return found


def timings_table(params: Params, root: Path) -> pd.DataFrame:
    """Seconds per kind of stage and competition, from each stage's last run (per-fold stages summed); a quick run
    shows the quick runs' logs, a full run the full runs' (a discarded quick experiment leaves them as they were)."""
    seconds, runs, last = defaultdict(float), defaultdict(int), {}
    logs = [read_json(path) for path in sorted(logs_dir(root, params.quick).glob("*.json"))]
    every = {log["stage"] for log in logs if log.get("competition") is None}  # one stage for all competitions
    for log in logs:
        kind = log["stage"].split("@")[0]
        per_model = kind in ("features", "head", "finetune")
        if (log.get("competition") not in (*params.competitions, None) or log.get("fold") not in (None, *params.folds)
                or (log.get("model") not in params.models if per_model else log.get("model") is not None)
                or (kind in every and log.get("competition") is not None)):
            continue  # a stage no longer in the pipeline (e.g. inputs@<comp>, before one inputs stage did them all)
        key = (log.get("competition") or "(all)", kind)
        seconds[key] += log["seconds"]
        runs[key] += 1
        last[key] = max(last.get(key, ""), log["finished"])
    order = ["inputs", "download", "folds", "prepare", "features", "head", "finetune", "ensemble", "curves"]
    rows = [{"competition": c, "stage": k, "runs": runs[c, k], "seconds": f"{seconds[c, k]:.1f}",
             "last finished (UTC)": last[c, k][:19].replace("T", " ")}
            for c, k in sorted(seconds, key=lambda ck: (ck[0], order.index(ck[1]) if ck[1] in order else 99))]
    return pd.DataFrame(rows)


def run(params: Params, root: Path = Path(".")) -> str:
    with pd.option_context("display.width", WIDTH, "display.max_colwidth", 24):
        text = "Scores (cross-validated; `pipeline compare <comp>` shows them fold by fold against a baseline):\n"
        text += scores_table(params, root).to_string(index=False)
        notes = [f"{comp}: NOT this run's scores: {why}; `dvc repro` remakes them."
                 for comp, why in stale(params, root).items()]
        for comp in params.competitions:
            quick = Run.on_disk(comp, root).metrics.get("quick")
            if quick:
                notes.append(f"{comp}: a QUICK run ({quick}): compare it with a quick baseline made the same way; "
                             "not a submission's score.")
        text += "".join("\n" + textwrap.fill(note, WIDTH, subsequent_indent="  ") for note in notes)
        timings = timings_table(params, root)
        if len(timings):
            text += "\n\nStage wall times (each stage's last run, per-fold stages summed):\n"
            text += timings.to_string(index=False)
    pictured = sorted({p.parent.name for p in (root / "plots").glob("*/*.png")})
    if pictured:
        text += "\n\n" + textwrap.fill(f"Learning curves: plots/<comp>/*.png for {', '.join(pictured)} (or `dvc "
                                       "plots show`)", WIDTH)
    return text


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    try:
        print(run(load_params()))
    except (PipelineError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
