"""The `pipeline` console script: compare, report, submit, notebook, submissions, score, lr-find, overfit.

The DVC stages have their own entry points (`python -m pipeline.<stage>`); these are run by hand: compare reads
committed metrics of experiments, two talk to Kaggle, lr-find plots loss against learning rate, overfit checks that
a model can learn at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pipeline.commands import submit
from pipeline.core.competitions import COMPETITIONS
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.stage import check_platform


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Send submissions to Kaggle, compare scores, find learning rates.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="upload submissions/<comp>/submission.csv and record it in "
                                      "submissions/scores.csv")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p.add_argument("-m", "--message", help="submission description (default: the CV score in the competition's "
                                                "metric and the git commit)")
    p.add_argument("--wait", action="store_true", help="poll until Kaggle has scored it, and record the score")
    p.add_argument("--force", action="store_true",
                   help="submit even a file made from demo data or outputs older than their params or code")
    p.add_argument("--poll-seconds", type=float, default=10.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up waiting after this many seconds")
    p = sub.add_parser("notebook", help="a code competition's Kaggle notebook: DIR/dataset (networks, choice, wheel) "
                       "and DIR/kernel (metadata, script)")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p.add_argument("dir", type=Path, help="folder to write dataset/ and kernel/ into")
    p.add_argument("--owner", help="Kaggle user owning the dataset and notebook (default: your credentials' username)")
    p.add_argument("--wheels", type=Path, help="folder of extra wheels to ship, for packages the Kaggle image lacks "
                   "(e.g. from `pip download --no-deps`)")
    p = sub.add_parser("submissions", help="Kaggle's scores of your submissions beside their CV scores")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p = sub.add_parser("score", help="score submissions/<comp>/submission.csv against your own answer key, beside CV")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p.add_argument("answers", type=Path, help="CSV of test ids and true labels (columns id, label)")
    p = sub.add_parser("compare", help="experiments against a baseline, fold by fold and per driver, with noise")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p.add_argument("experiments", nargs="*", metavar="EXP",
                   help="DVC experiment names, git commits, branches or tags, or 'workspace' (default: workspace); "
                   "with several baselines: one change's runs of several seeds")
    p.add_argument("-b", "--baseline", nargs="+", default=["HEAD"], metavar="BASE",
                   help="revision to compare against (default: HEAD); several (after the EXPs): the baseline's runs "
                   "of the same seeds, each paired with the EXP of its seed (README: repeated seeds)")
    p.add_argument("--all", action="store_true", help="list every DVC experiment of the baseline: its changed "
                   "params, CV, corrected standard error and verdict")
    p = sub.add_parser("report", help="reports/<comp>/index.html: scores, curves, errors, images, the model")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p = sub.add_parser("lr-find", help="learning-rate range test for the head and finetuning: plots in reports/")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p.add_argument("fold", type=int, nargs="?", default=0, help="fold whose training rows are used (default 0)")
    p.add_argument("--stage", choices=["head", "finetune", "both"], default="both")
    p.add_argument("--model", help="which of params.yaml's models (default: the first)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate, unless the loss explodes first")
    p.add_argument("--steps", type=int, default=100, help="batches, one learning rate each")
    p = sub.add_parser("overfit", help="can the model learn? drive the loss on a few fixed batches near zero")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p.add_argument("fold", type=int, nargs="?", default=0, help="fold whose training rows are used (default 0)")
    p.add_argument("--stage", choices=["head", "finetune", "both"], default="both")
    p.add_argument("--model", help="which of params.yaml's models (default: the first)")
    p.add_argument("--batches", type=int, default=2, help="how many batches to memorise")
    p.add_argument("--steps", type=int, default=100, help="training steps on them")
    p.add_argument("--target", type=float, default=0.05, help="the loss that counts as memorised")
    return parser


def _params_for(args):
    """params.yaml, with the command's fold and --model checked against it."""
    from pipeline.core.config import load_params

    params = load_params()
    if args.fold not in params.folds:
        raise ConfigError(f"fold {args.fold} is not one of params.yaml's folds {list(params.folds)}")
    if args.model is not None and args.model not in params.models:
        raise ConfigError(f"--model {args.model!r} is not one of params.yaml's models {list(params.models)}")
    return params


def _lr_find(args) -> None:
    from pipeline.commands import lr_find  # imports torch and timm: only for this command

    params = _params_for(args)
    if not (0 < args.start < args.end) or args.steps < 3:
        raise ConfigError(f"lr-find needs 0 < --start < --end and --steps >= 3; got --start {args.start}, "
                          f"--end {args.end}, --steps {args.steps}")
    stages = lr_find.STAGES if args.stage == "both" else (args.stage,)
    found = lr_find.run(params, args.comp, args.fold, stages, args.start, args.end, args.steps, model=args.model)
    for stage, f in found.items():
        print(f"{args.comp} {stage}: loss lowest at lr {f['minimum']:.3g}, steepest fall at {f['steepest']:.3g}; "
              f"suggested peak lr {f['suggested']:.3g} ({args.comp}.{stage}.lr in params.yaml). Plot: {f['plot']}")


def _overfit(args) -> int:
    from pipeline.commands import overfit  # imports torch and timm: only for this command

    params = _params_for(args)
    if args.batches < 1 or args.steps < 1 or args.target <= 0:
        raise ConfigError(f"overfit needs --batches >= 1, --steps >= 1 and --target > 0; got {args.batches}, "
                          f"{args.steps}, {args.target}")
    stages = overfit.STAGES if args.stage == "both" else (args.stage,)
    found = overfit.run(params, args.comp, args.fold, stages, args.batches, args.steps, args.target, model=args.model)
    for stage, f in found.items():
        verdict = ("it can learn: now regularise" if f["learns"] else
                   f"it did not get below {args.target:g}: check {args.comp}.{stage}.lr (`pipeline lr-find`), the "
                   "labels and the input before adding regularisation")
        print(f"{args.comp} {stage}: training loss on {f['rows']} fixed rows {f['first']:.4f} -> {f['last']:.4f} "
              f"in {args.steps} steps; {verdict}. Plot: {f['plot']}")
    return 0 if all(f["learns"] for f in found.values()) else 3  # (2: argparse's usage errors)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_platform()
        if args.command == "submit":
            row = submit.run(args.comp, args.message, args.wait, poll_seconds=args.poll_seconds, timeout=args.timeout,
                             force=args.force)
            print(f"Submitted {args.comp} (ref {row['ref']}): status {row['status']}, public score "
                  f"{row['public_score']}, CV {row['metric']} {row['cv_score']}; recorded in submissions/scores.csv")
        elif args.command == "notebook":
            from pipeline.commands import notebook

            wheels = sorted(args.wheels.glob("*.whl")) if args.wheels else []
            print(notebook.describe(notebook.run(args.comp, args.dir, args.owner, wheels)))
        elif args.command == "score":
            from pipeline.commands import score

            print(score.describe(args.comp, score.run(args.comp, args.answers)))
        elif args.command == "compare":
            from pipeline.commands import compare, experiments

            if args.all and (args.experiments or len(args.baseline) > 1):
                raise ConfigError("compare --all lists every experiment of one baseline; name no EXP and one -b, "
                                  "or drop --all")
            print(experiments.run(args.comp, args.baseline[0]) if args.all
                  else compare.run(args.comp, args.experiments, args.baseline))
        elif args.command == "report":
            from pipeline.core.config import load_params
            from pipeline.stages import report  # imports torch and timm: only for this command

            print(f"Report: {report.run(load_params(), args.comp)} (pictures in reports/{args.comp}/figures/)")
        elif args.command == "lr-find":
            _lr_find(args)
        elif args.command == "overfit":
            return _overfit(args)
        else:
            board = submit.leaderboard(args.comp)
            with pd.option_context("display.width", 200, "display.max_colwidth", 40):
                print(board.to_string(index=False) if len(board) else "No submissions yet.")
    except (PipelineError, FileNotFoundError) as e:
        print(f"pipeline {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
