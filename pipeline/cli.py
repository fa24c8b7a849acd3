"""The `pipeline` console script: `pipeline submit <comp>` and `pipeline submissions <comp>`.

The DVC stages have their own entry points (`python -m pipeline.<stage>`); these two talk to Kaggle and are run
by hand.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from pipeline import submit
from pipeline.competitions import COMPETITIONS
from pipeline.errors import PipelineError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Send submissions to Kaggle and compare scores.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="upload submissions/<comp>.csv and record it in submissions/scores.csv")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    p.add_argument("-m", "--message", help="submission description (default: CV log loss and git commit)")
    p.add_argument("--wait", action="store_true", help="poll until Kaggle has scored it, and record the score")
    p.add_argument("--poll-seconds", type=float, default=10.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up waiting after this many seconds")
    p = sub.add_parser("submissions", help="Kaggle's scores of your submissions beside their CV scores")
    p.add_argument("comp", choices=sorted(COMPETITIONS))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "submit":
            row = submit.run(args.comp, args.message, args.wait, poll_seconds=args.poll_seconds, timeout=args.timeout)
            print(f"Submitted {args.comp} (ref {row['ref']}): status {row['status']}, public score "
                  f"{row['public_score']}, CV log loss {row['cv_logloss']}; recorded in submissions/scores.csv")
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
