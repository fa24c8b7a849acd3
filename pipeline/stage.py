"""The command line every DVC stage shares: `python -m pipeline.<stage> <comp> [<fold>]`."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.config import load_params
from pipeline.errors import PipelineError


def stage_main(doc: str, run: Callable, per_fold: bool = False, argv: list[str] | None = None) -> None:
    """Parse what DVC's matrix supplies, load params.yaml, call `run`; user errors print without a traceback."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("comp", help="competition short name, e.g. statefarm")
    if per_fold:
        parser.add_argument("fold", type=int, help="validation fold, one of params.yaml's folds")
    args = parser.parse_args(argv)
    try:
        params = load_params()
        if per_fold:
            if args.fold not in params.folds:
                parser.error(f"fold {args.fold} is not one of params.yaml's folds {list(params.folds)}")
            run(params, args.comp, args.fold)
        else:
            run(params, args.comp)
    except (PipelineError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
