"""`pipeline lr-find <comp> [fold]`: the learning-rate range test, for the head and for finetuning.

Each starts where its stage starts (the head: a fresh head on the fold's precomputed features; finetuning: the
features backbone joined to the fold's trained head, with the backbone's lower rate ratio), then raises the
learning rate exponentially batch by batch and records the smoothed training loss until it explodes. Read the
plot as the lesson teaches: the loss falls, bottoms out, then shoots up; set the peak `lr` below the bottom,
where the loss still falls steeply (the printed suggestion is the bottom's rate / 10, fast.ai's rule of thumb).
Nothing is saved but the plots and the curves: `reports/<comp>/lr_find_<stage>_fold<k>.png` and `.csv`. It needs
`dvc repro` to have run up to the fold's head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Params
from pipeline.core.errors import OutputError
from pipeline.core.io import write_csv
from pipeline.core.paths import Paths
from pipeline.reporting.figures import pyplot, save_png
from pipeline.stages import finetune, head
from pipeline.training.devices import pick_device
from pipeline.training.engine import lr_range

STAGES = ("head", "finetune")


def suggest(rates: list[float], losses: list[float]) -> dict[str, float]:
    """The rate at the smoothed loss's minimum, a tenth of it (the suggested peak), and the steepest fall before it."""
    if not losses:
        raise OutputError("the loss was not finite from the first batch on; lower --start")
    bottom = int(np.argmin(losses))
    skip = max(1, len(losses) // 10)  # the first batches' smoothed loss is mostly start-up noise (fast.ai skips them)
    if bottom - skip < 2:
        return {"minimum": rates[bottom], "suggested": rates[bottom] / 10, "steepest": rates[bottom]}
    slope = np.gradient(np.asarray(losses[skip : bottom + 1]), np.log(rates[skip : bottom + 1]))
    return {"minimum": rates[bottom], "suggested": rates[bottom] / 10,
            "steepest": rates[skip + int(np.argmin(slope))]}


def _plot(path: Path, curves: pd.DataFrame, found: dict, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(curves["lr"], curves["loss"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (peak group)")
    ax.set_ylabel("training loss (smoothed)")
    ax.axvline(found["suggested"], color="tab:green", linestyle="--", label=f"suggested {found['suggested']:.2g}")
    ax.axvline(found["minimum"], color="tab:red", linestyle=":", label=f"minimum {found['minimum']:.2g}")
    ax.set_title(title)
    ax.legend()
    save_png(fig, path)


def check_ready(paths: Paths, comp_name: str, model: str, fold: int, stages) -> None:
    """What the stages' starting points need must exist: the fold's head for finetuning, else the features."""
    needed = paths.fold_model("head", fold) if "finetune" in stages else paths.features
    if not needed.exists():
        raise OutputError(f"{needed} does not exist yet; run `dvc repro head@{comp_name}-{model}` first.")


def stage_starts(params: Params, comp_name: str, fold: int, stages, root: Path, model: str | None,
                 seed: int | None = None):
    """For each of `stages` of `model` (default: the first of params.yaml's models), after checking the fold is
    ready: (stage, paths, device, train loader, network, optimizer, mixed-precision settings), the stage started
    as `stage_start` starts it (after `torch.manual_seed(seed)` when given)."""
    import torch

    model = model or params.models[0]
    paths = Paths(comp_name, root, model)
    device = pick_device(params.device)
    check_ready(paths, comp_name, model, fold, stages)
    for stage in stages:
        if seed is not None:
            torch.manual_seed(seed)
        yield (stage, paths, device, *stage_start(params, comp_name, model, fold, stage, paths, device))


def stage_start(params: Params, comp_name: str, model: str, fold: int, stage: str, paths: Paths, device):
    """Where `stage` starts for the fold, through the stage's own setup(): its training loader, network, optimizer
    and the mixed-precision settings it trains with."""
    if stage == "head":
        _, (train_loader, _, _), network, optimizer = head.setup(params, comp_name, model, fold, paths)
        return train_loader, network, optimizer, {}
    _, _, (train_loader, _, _), network, optimizer = finetune.setup(params, comp_name, model, fold, paths, device)
    ft = params.model(comp_name, model).finetune
    return train_loader, network, optimizer, {"amp": ft.amp, "channels_last": ft.channels_last}


def run(params: Params, comp_name: str, fold: int, stages=STAGES, start: float = 1e-7, end: float = 10.0,
        steps: int = 100, root: Path = Path("."), model: str | None = None) -> dict[str, dict]:
    """Run the range test for each of `stages` of `model` (default: the first of params.yaml's models); return
    each one's suggestion (and write plot and curve)."""
    found = {}
    for stage, paths, device, train_loader, network, optimizer, amp in stage_starts(params, comp_name, fold, stages,
                                                                                     root, model):
        model = paths.model
        rates, losses = lr_range(network.to(device), train_loader, optimizer, device, start, end, steps, **amp)
        curves = pd.DataFrame({"lr": rates, "loss": losses})
        found[stage] = suggest(rates, losses)
        out = paths.reports / f"lr_find_{model}_{stage}_fold{fold}"
        write_csv(out.with_suffix(".csv"), curves)
        _plot(out.with_suffix(".png"), curves, found[stage], f"{comp_name} {model} {stage}, fold {fold}")
        found[stage]["plot"] = str(out.with_suffix(".png"))
    return found
