"""`pipeline overfit <comp> [fold]`: can the model learn at all? The lesson's first step before regularising.

It takes a few batches of the fold's training rows (`--batches`), exactly as the stage would feed them (the head:
precomputed features; finetuning: the cut backbone joined to the fold's trained head, on augmented images), fixes
them, switches dropout off, and trains on them over and over at the stage's peak learning rate. A network and
learning rate that can learn drive the training loss on those few batches near zero (below `--target`) within a
few dozen steps; if they cannot memorise 2 batches they cannot learn the data set either, and regularisation
(dropout, augmentation, weight decay) is not the problem yet: look at the learning rate, the labels, the input.
Nothing is saved but the curve: `reports/<comp>/overfit_<model>_<stage>_fold<k>.png` and `.csv`.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from pipeline.commands.lr_find import stage_starts
from pipeline.core.config import Params
from pipeline.core.io import write_csv
from pipeline.reporting.figures import pyplot, save_png
from pipeline.training.devices import grad_scaler
from pipeline.training.engine import train_step

STAGES = ("head", "finetune")


def memorise(network, batches: list, optimizer, device, steps: int, amp=False, channels_last=False) -> list[float]:
    """Train `network` on the fixed `batches`, one per step in turn, with dropout off; the loss of each step."""
    for module in network.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0  # memorising is the point: no regularisation yet
    network.train()
    scaler = grad_scaler(device, amp)
    return [train_step(network, *batches[step % len(batches)], optimizer, device, amp, channels_last, scaler)
            for step in tqdm(range(steps), desc="memorising", unit="step", leave=False, disable=None)]


def _plot(path: Path, losses: list[float], target: float, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.axhline(target, color="tab:green", linestyle="--", label=f"target {target:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step (the same few batches again and again)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    save_png(fig, path)


def run(params: Params, comp_name: str, fold: int, stages=STAGES, batches: int = 2, steps: int = 100,
        target: float = 0.05, root: Path = Path("."), model: str | None = None) -> dict[str, dict]:
    """The overfitting check for each of `stages` of `model` (default: the first of params.yaml's models): each
    stage's first and last loss, whether the last is below `target`, and its plot."""
    found = {}
    for stage, paths, device, train_loader, network, optimizer, amp in stage_starts(params, comp_name, fold, stages,
                                                                                     root, model, seed=0):
        model = paths.model
        fixed = list(islice(train_loader, batches))  # drawn once: the same images and augmentations every step
        losses = memorise(network.to(device), fixed, optimizer, device, steps, **amp)
        tail = losses[-len(fixed):]  # the last pass over the fixed batches
        last = sum(tail) / len(tail)
        out = paths.reports / f"overfit_{model}_{stage}_fold{fold}"
        write_csv(out.with_suffix(".csv"), pd.DataFrame({"step": range(1, steps + 1), "loss": losses}))
        rows = sum(len(y) for _, y in fixed)
        _plot(out.with_suffix(".png"), losses, target, f"{comp_name} {model} {stage}, fold {fold}: {rows} rows")
        found[stage] = {"first": losses[0], "last": last, "learns": last < target, "rows": rows,
                        "plot": str(out.with_suffix(".png"))}
    return found
