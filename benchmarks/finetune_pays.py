"""Benchmark (issue 17): does finetuning beat the head it starts from, and the ensemble both, on real images?

Three archives that the demo generator did not make, each run through the whole pipeline in-process with the
shipped params (only `data.source` changed) and scored on its secret test labels:
- `photos`: `photos`' State Farm layout (one source photo per class; archive seed 1 by default);
- `statefarm-like` and `dogscats-like`: `benchmarks/unseen_sources.py`, whose test images come from source
  images no train image used (the issue's check that cannot flatter).
Per fold it prints the head's, the finetuned network's and the ensemble's out-of-fold log loss (the ensemble's
as cross-fitted, the figure CV reports), then CV against the test score of the submission and of each member
alone (its 5 fold networks averaged). Baseline in the same run: the head, which finetuning starts from.

    TQDM_DISABLE=1 python benchmarks/finetune_pays.py --seed 1                     # all three checks
    python benchmarks/finetune_pays.py --only dogscats-like --seed 1 --set dogscats.finetune.batch_norm=train
    python benchmarks/finetune_pays.py --seed 1 --reuse /tmp/finetune-pays-XXXX   # the ensemble again, kept folds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from pipeline.scoring import choosing

from pipeline.stages import ensemble
from pipeline.data.cache import encode_labels, load_cache
from pipeline.core.competitions import get_competition
from pipeline.core.config import parse_params
from pipeline.stages.inprocess import run_competition
from pipeline.data.outputs import load_test
from pipeline.core.paths import Paths
from photos import write_photo_archive
from pipeline.scoring.metrics import row_losses, scores
from pipeline.scoring.submission import submission_probs
from unseen_sources import write_dogscats_like, write_statefarm_like

REPO = Path(__file__).resolve().parents[1]
CHECKS = {  # name: (competition, archive writer(path, answers, seed))
    "photos": ("statefarm", lambda p, a, s: write_photo_archive(p, a, seed=s)),
    "statefarm-like": ("statefarm", write_statefarm_like),
    "dogscats-like": ("dogscats", write_dogscats_like),
}
SLUGS = {"statefarm": "state-farm-distracted-driver-detection", "dogscats": "dogs-vs-cats-redux-kernels-edition"}


def params_for(comp: str, archive: Path, changes: list[str]):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["competitions"] = [comp]
    for other in ("dogscats", "statefarm", "digits"):
        if other != comp:
            raw.pop(other, None)
    raw[comp]["data"]["source"] = str(archive)
    raw[comp]["prepare"]["image_size"] = raw[comp]["data"]["demo"]["image_size"]  # RESULTS' rows: the demo's size
    for change in changes:
        dotted, value = change.split("=", 1)
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = yaml.safe_load(value)
    return parse_params(raw, "benchmark params")


def member_test_scores(root: Path, comp_name: str, params, answers: Path) -> dict[str, dict]:
    """Each member's test predictions (its fold networks log-averaged, as the ensemble does) on the secret labels."""
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root, "main")
    _, test_index = load_cache(paths.cache, "test")
    truth = pd.read_csv(answers, dtype=str).set_index("id").loc[test_index["id"], "label"].reset_index(drop=True)
    y = encode_labels(truth, comp.classes)
    out = {}
    for stage in ("head", "finetune"):
        probs = choosing.log_average(load_test([paths.fold_model(stage, k) for k in params.folds]))
        out[stage] = scores(probs, y)
    sub = pd.read_csv(paths.submission, dtype={comp.id_column: str})
    sub_truth = pd.read_csv(answers, dtype=str).set_index("id").loc[sub[comp.id_column], "label"]
    probs, y = submission_probs(comp, sub), encode_labels(sub_truth.reset_index(drop=True), comp.classes)
    rows = row_losses(probs, y)  # the test score's own noise: a small test set cannot confirm CV to 25%
    out["submission"] = {**scores(probs, y), "se": float(rows.std(ddof=1) / len(rows) ** 0.5), "rows": len(rows)}
    return out


def run_check(name: str, seed: int, changes: list[str], work: Path, reuse: bool = False) -> dict:
    """The whole pipeline on a fresh archive; with `reuse`, only the ensemble again on `work`'s kept fold outputs
    (it is deterministic from them: an ensemble rule is compared without retraining)."""
    comp_name, writer = CHECKS[name]
    root = work / name
    archive, answers = root / "in" / f"{SLUGS[comp_name]}.zip", root / "in" / "answers.csv"
    if reuse and not (root / "models").is_dir():
        raise SystemExit(f"--reuse {work}: no finished {name} run in {root} (run it first, with the same --seed)")
    if not reuse:
        root.mkdir(parents=True)
        writer(archive, answers, seed)
    params = params_for(comp_name, archive, changes)
    cwd, start = os.getcwd(), time.perf_counter()
    os.chdir(root)  # dvclive looks for a repository in the working directory
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            (ensemble.run if reuse else run_competition)(params, comp_name, root)
    finally:
        os.chdir(cwd)
    cv = json.loads((root / "metrics" / comp_name / "cv.json").read_text())
    top = json.loads((root / "metrics" / f"{comp_name}.json").read_text())
    folds = {int(k): {"head": v["main/head_logloss"], "finetune": v["main/finetune_logloss"],
                      "ensemble": v["logloss"], "choice": v["choice"]} for k, v in cv["folds"].items()}
    return {"check": name, "seed": seed, "competition": comp_name, "folds": folds, "cv": top["logloss"],
            "cv_accuracy": top["accuracy"], "choice": f"{cv['choice']['kind']}+{cv['choice']['method']}",
            "members_cv": cv["members_logloss"], "test": member_test_scores(root, comp_name, params, answers),
            "seconds": round(time.perf_counter() - start)}


def report(r: dict) -> str:
    lines = [f"## {r['check']} (archive seed {r['seed']}, {r['competition']} params, {r['seconds']} s)",
             "| fold | head | finetune | ensemble (cross-fitted) | its choice | finetune < head | ensemble <= best |",
             "|---|---|---|---|---|---|---|"]
    wins = ens_ok = 0
    for k, f in sorted(r["folds"].items()):
        win, ok = f["finetune"] < f["head"], f["ensemble"] <= min(f["head"], f["finetune"])
        wins, ens_ok = wins + win, ens_ok + ok
        lines.append(f"| {k} | {f['head']:.4f} | {f['finetune']:.4f} | {f['ensemble']:.4f} | {f['choice']} | "
                     f"{'yes' if win else 'no'} | {'yes' if ok else 'no'} |")
    t = r["test"]
    sub = t["submission"]
    gap = abs(r["cv"] - sub["logloss"]) / sub["logloss"]
    lines += [f"finetune beats head on {wins}/{len(r['folds'])} folds; the ensemble is at or below both on "
              f"{ens_ok}/{len(r['folds'])}.",
              f"CV: ensemble {r['cv']:.4f} ({r['choice']}, accuracy {r['cv_accuracy']:.3f}); members "
              + ", ".join(f"{m} {v:.4f}" for m, v in r["members_cv"].items()),
              f"test: submission {sub['logloss']:.4f} +- {sub['se']:.4f} (standard error, {sub['rows']} images; "
              f"accuracy {sub['accuracy']:.3f}), "
              f"head alone {t['head']['logloss']:.4f} ({t['head']['accuracy']:.3f}), finetune alone "
              f"{t['finetune']['logloss']:.4f} ({t['finetune']['accuracy']:.3f}); CV vs test {gap:.0%} "
              f"({abs(r['cv'] - sub['logloss']) / sub['se']:.1f} standard errors)"]
    return "\n".join(lines)


LABELS = {"photos": "`photos`", "statefarm-like": "State Farm-like", "dogscats-like": "Dogs vs Cats-like"}


def results_row(r: dict) -> str:
    """The check's row of RESULTS.md's table (tests/test_claims.py checks the table against the committed JSON)."""
    folds = r["folds"].values()
    wins = sum(f["finetune"] < f["head"] for f in folds)
    ok = sum(f["ensemble"] <= min(f["head"], f["finetune"]) for f in folds)
    worst = max(f["ensemble"] / min(f["head"], f["finetune"]) for f in folds)
    t, sub = r["test"], r["test"]["submission"]
    members = r["members_cv"]
    return (f"| {LABELS[r['check']]} | {members['main/head']:.3f} | {members['main/finetune']:.3f} | **{r['cv']:.3f}** "
            f"(`{r['choice']}`) | {wins}/{len(folds)} | {ok}/{len(folds)}"
            + (f" (worst {worst:.2f}x)" if ok < len(folds) else "")
            + f" | {t['head']['logloss']:.3f} / {t['finetune']['logloss']:.3f} / **{sub['logloss']:.3f}** +- "
            f"{sub['se']:.3f} ({sub['accuracy']:.3f}) | {abs(r['cv'] - sub['logloss']) / sub['logloss']:.0%} "
            f"({abs(r['cv'] - sub['logloss']) / sub['se']:.1f} SE) | {r['seconds']} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CHECKS), action="append", help="run these checks (default: all)")
    parser.add_argument("--seed", type=int, default=1, help="archive seed (0 was kept for choosing)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--reuse", type=Path, metavar="DIR",
                        help="a finished run's outputs: re-run only the ensemble (same --seed and --set)")
    args = parser.parse_args()
    work = args.reuse or Path(tempfile.mkdtemp(prefix="finetune-pays-"))
    results = []
    for name in args.only or list(CHECKS):
        results.append(run_check(name, args.seed, args.set, work, reuse=args.reuse is not None))
        print(report(results[-1]), "", results_row(results[-1]), sep="\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"(outputs left in {work}; delete when done)")


if __name__ == "__main__":
    main()
