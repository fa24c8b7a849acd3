"""The command line every DVC stage shares: `python -m pipeline.<stage> <comp> [<model>] [<fold>]` (no <comp>
for a stage over every competition).

After the work it prints what the stage did (its key figure, the files it wrote, its wall time) and records the
same in `logs/stages/<stage>.json` (a quick run's in `logs/stages/quick/`), from which the `summary` stage prints
its table at the end of `dvc repro`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import psutil

from pipeline.core.config import load_params
from pipeline.core.errors import PipelineError
from pipeline.core.io import write_json

LOGS = Path("logs") / "stages"


def logs_dir(root: Path, quick: bool) -> Path:
    """Where the stages' run logs go: a quick run's apart, so that discarding the quick experiment (the README's
    `git checkout ... && dvc checkout`) leaves the full run's own times for the summary to show."""
    return root / LOGS / "quick" if quick else root / LOGS


def check_platform(platform: str = sys.platform, preadv: bool = hasattr(os, "preadv")) -> None:
    """Refuse, in one line, a system the pipeline cannot run on (every stage and the console script call this
    first): Windows (the image cache is written and read with os.pwrite and os.preadv, and prepare's decoding
    processes start by forkserver: none exists there), and a macOS before 11 (no os.preadv). Linux is what is
    tested; macOS 11+ has both, untested."""
    if platform == "win32":
        raise PipelineError("Windows is not supported (found sys.platform 'win32'): the pipeline needs os.pwrite, "
                            "os.preadv and forkserver processes, which Windows lacks. Run it on Linux, e.g. in WSL 2.")
    if not preadv:
        raise PipelineError(f"this system's Python has no os.preadv (sys.platform {platform!r}), which reading the "
                            "image cache needs; expected Linux or macOS 11 or later. Upgrade the system, or run on "
                            "Linux.")


def stage_name(run: Callable, comp: str | None, model: str | None, fold: int | None) -> str:
    """The DVC stage's name, e.g. finetune@statefarm-main-0, or inputs (`python -m` runs the module as __main__)."""
    spec = getattr(sys.modules.get(run.__module__), "__spec__", None)
    module = spec.name if spec is not None else run.__module__
    name = module.rsplit(".", 1)[-1].replace("_", "-")
    if comp is None:
        return name
    return "-".join([f"{name}@{comp}"] + [str(v) for v in (model, fold) if v is not None])


def stage_main(
    doc: str,
    run: Callable,
    per_fold: bool = False,
    per_model: bool = False,
    per_comp: bool = True,
    argv: list[str] | None = None,
    summary: Callable[[object], str] | None = None,
    wrote: Callable[[str, str | None, int | None], Iterable[Path]] | None = None,
    root: Path = Path("."),
) -> None:
    """Parse what DVC's matrix supplies, load params.yaml, call `run`, then say what it did; user errors print
    without a traceback. `summary(result)` gives the key figure, `wrote(comp, model, fold)` the files written.
    Per-fold stages are per model too; a stage that is not per competition runs `run(params)` for them all."""
    per_model = per_model or per_fold
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if per_comp:
        parser.add_argument("comp", help="competition short name, e.g. statefarm")
    if per_model:
        parser.add_argument("model", help="model name, one of params.yaml's models")
    if per_fold:
        parser.add_argument("fold", type=int, help="validation fold, one of params.yaml's folds")
    args = parser.parse_args(argv)
    comp = args.comp if per_comp else None
    model = args.model if per_model else None
    fold = args.fold if per_fold else None
    start = time.perf_counter()
    try:
        check_platform()
        params = load_params()
        if per_fold and args.fold not in params.folds:
            parser.error(f"fold {args.fold} is not one of params.yaml's folds {list(params.folds)}")
        if per_model and model not in params.models:
            parser.error(f"model {model!r} is not one of params.yaml's models {list(params.models)}")
        result = run(params, *[v for v in (comp, model, fold) if v is not None])
    except (PipelineError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C reaches DVC and the stage alike: one line here, DVC says the rest
        print(f"\ninterrupted: {stage_name(run, comp, model, fold)} stopped before writing its outputs (they "
              "are written whole or not at all); the next `dvc repro` runs it again, finetuning from its last "
              "finished epoch.", file=sys.stderr)
        sys.exit(130)
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("RANK", "0")):
        return  # one of torchrun's data-parallel processes other than rank 0, which reports for them all
    seconds = time.perf_counter() - start
    name = stage_name(run, comp, model, fold)
    try:
        figure = summary(result) if summary else ""
        files = [str(p) for p in wrote(comp, model, fold)] if wrote else []
    except Exception as e:  # the work is done and written: a failed summary must not fail the stage
        figure, files = f"(could not summarise: {e!r})", []
    print(f"{name}:{figure}" if figure.startswith("\n") else f"{name}: {figure}" if figure else name)
    if files:
        print(f"  wrote {', '.join(files)}")
    total = time.time() - psutil.Process().create_time()  # with the interpreter's start and imports
    print(f"  took {total:.1f} s ({seconds:.1f} s of work, {total - seconds:.1f} s start-up and imports)")
    write_json(logs_dir(root, params.quick) / f"{name}.json",
               {"stage": name, "competition": comp, "model": model, "fold": fold, "summary": figure, "wrote": files,
                "seconds": round(total, 2), "work_seconds": round(seconds, 2),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
