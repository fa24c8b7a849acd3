"""Every scoring stage of one competition in this process, in dvc.yaml's order: what `dvc repro` runs up to the
submission, without DVC's bookkeeping (no dvc.lock, nothing skipped, nothing cached; the pictures of `curves` and
`report` are left out). For notebooks, tests and benchmarks; `dvc repro` is how the pipeline runs for real."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from pathlib import Path

from pipeline.core.config import Params
from pipeline.stages import download, ensemble, features, finetune, folds, head, prepare


def run_competition(params: Params, comp_name: str, root: Path = Path(".")) -> dict:
    """Run download, folds, prepare, then each model's features, head and finetune per fold, then the ensemble.

    Returns each stage's result, keyed by the stage's name (`download`, `folds`, `prepare`, `ensemble`),
    `("features", model)` or `(stage, model, fold)`, and under `seconds` the wall time of each kind of stage.
    """
    root = Path(root).resolve()  # the stages are given it after the chdir
    results, seconds = {}, defaultdict(float)

    def timed(kind: str, key, call) -> None:
        start = time.perf_counter()
        results[key] = call()
        seconds[kind] += time.perf_counter() - start

    with contextlib.chdir(root):  # dvclive looks for a DVC repo in the working directory
        for name, stage in (("download", download), ("folds", folds), ("prepare", prepare)):
            timed(name, name, lambda: stage.run(params, comp_name, root))
        for model in params.models:
            timed("features", ("features", model), lambda: features.run(params, comp_name, model, root))
            for k in params.folds:
                timed("head", ("head", model, k), lambda: head.run(params, comp_name, model, k, root))
                timed("finetune", ("finetune", model, k), lambda: finetune.run(params, comp_name, model, k, root))
        timed("ensemble", "ensemble", lambda: ensemble.run(params, comp_name, root))
    results["seconds"] = dict(seconds)
    return results
