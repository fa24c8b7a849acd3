"""The command line every DVC stage shares: `python -m pipeline.<stage> <comp> [<fold>]`.

After the work it prints what the stage did (its key figure, the files it wrote, its wall time) and records the
same in `logs/stages/<stage>.json`, from which the `summary` stage prints its table at the end of `dvc repro`.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import psutil
from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.io import write_json

LOGS = Path("logs") / "stages"


def stage_name(run: Callable, comp: str, fold: int | None) -> str:
    """The DVC stage's name, e.g. head@statefarm-0 (`python -m` runs the module as __main__)."""
    spec = getattr(sys.modules.get(run.__module__), "__spec__", None)
    module = spec.name if spec is not None else run.__module__
    name = f"{module.rsplit('.', 1)[-1].replace('_', '-')}@{comp}"
    return name if fold is None else f"{name}-{fold}"


def stage_main(
    doc: str,
    run: Callable,
    per_fold: bool = False,
    argv: list[str] | None = None,
    summary: Callable[[object], str] | None = None,
    wrote: Callable[[str, int | None], Iterable[Path]] | None = None,
    root: Path = Path("."),
) -> None:
    """Parse what DVC's matrix supplies, load params.yaml, call `run`, then say what it did; user errors print
    without a traceback. `summary(result)` gives the key figure, `wrote(comp, fold)` the files written."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("comp", help="competition short name, e.g. statefarm")
    if per_fold:
        parser.add_argument("fold", type=int, help="validation fold, one of params.yaml's folds")
    args = parser.parse_args(argv)
    fold = args.fold if per_fold else None
    start = time.perf_counter()
    try:
        params = load_params()
        if per_fold:
            if args.fold not in params.folds:
                parser.error(f"fold {args.fold} is not one of params.yaml's folds {list(params.folds)}")
            result = run(params, args.comp, args.fold)
        else:
            result = run(params, args.comp)
    except (PipelineError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    seconds = time.perf_counter() - start
    name = stage_name(run, args.comp, fold)
    try:
        figure = summary(result) if summary else ""
        files = [str(p) for p in wrote(args.comp, fold)] if wrote else []
    except Exception as e:  # the work is done and written: a failed summary must not fail the stage
        figure, files = f"(could not summarise: {e!r})", []
    print(f"{name}: {figure}" if figure else name)
    if files:
        print(f"  wrote {', '.join(files)}")
    total = time.time() - psutil.Process().create_time()  # with the interpreter's start and imports
    print(f"  took {total:.1f} s ({seconds:.1f} s of work, {total - seconds:.1f} s start-up and imports)")
    write_json(root / LOGS / f"{name}.json",
               {"stage": name, "competition": args.comp, "fold": fold, "summary": figure, "wrote": files,
                "seconds": round(total, 2), "work_seconds": round(seconds, 2),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
