"""Learning curves read the lesson's way, in one line each: what the report shows and the finetune stage prints."""

from __future__ import annotations

NOISE = 0.005
"""Log-loss differences smaller than this are not read as a trend (a near-perfect fold's 0.0001 -> 0.0002 is not
over-fitting)."""
RELATIVE_NOISE = 0.1
"""Nor is a change under this share of the loss itself: an epoch's validation score on a few hundred rows moves by
several percent from one epoch to the next without any trend (0.030 -> 0.033 is not over-fitting)."""


def _beyond_noise(change: float, level: float) -> bool:
    return change > max(NOISE, RELATIVE_NOISE * level)


def diagnose(history: list[dict]) -> str:
    """One line reading a fold's learning curve the lesson's way. Training loss is measured with dropout and
    augmentation on, so it sitting above validation is expected and not under-fitting by itself; a rise of
    validation within noise (`NOISE`, `RELATIVE_NOISE`) is not over-fitting."""
    last = history[-1]
    train, val = last.get("train_loss"), last["logloss"]
    if train is None:
        return "no training epochs"
    vals = [h["logloss"] for h in history[1:]]
    low = min(vals) if vals else val
    if len(vals) >= 2 and _beyond_noise(vals[-1] - low, low):
        return (f"over-fitting: validation rose from its low {low:.3f} to {vals[-1]:.3f} by the last epoch; "
                "fewer epochs, more dropout or augmentation")
    if val > 2 * train and val - train > 0.1:
        return (f"over-fitting: validation {val:.3f} is over twice the training loss {train:.3f}; more dropout, "
                "augmentation or data")
    if len(vals) >= 2 and _beyond_noise(vals[-2] - vals[-1], vals[-1]):
        return (f"still improving: validation fell {vals[-2]:.3f} -> {vals[-1]:.3f} in the last epoch; more epochs "
                "may help")
    above = (" (above validation: it is measured with dropout and augmentation on, so that is expected)"
             if _beyond_noise(train - val, val) else "")
    return f"fitting well: training {train:.3f}{above}, validation {val:.3f}, flat at the end"


def finetune_health(head: list[dict], finetune: list[dict], pretrained: bool = True,
                    kept: float | None = None) -> dict:
    """Finetuning against the head it starts from (issue 17): its epoch 0 is the head's validation score, its
    first epoch's training loss should stay near the head's last one (several times the head's, up to ln(C), means
    the network stopped computing the features the head learnt on: State Farm's demo went 0.14 -> 1.48), and its
    last epoch should beat the head. From scratch (`pretrained: false`) the head learnt on a random network's
    features: the backbone's first epochs change them wholesale, so a "lost start" is the recipe, not a fault.
    `kept` is the score of the predictions the stage kept (averaged over its test-time views), which differs from
    the last epoch's (one view): the reading names both. Returns the figures and a one-line reading that says what
    it means for this run."""
    start, last = finetune[0]["logloss"], finetune[-1]["logloss"]
    head_train = head[-1].get("train_loss") if head else None
    first_train = finetune[1]["train_loss"] if len(finetune) > 1 else None
    out = {"head_logloss": start, "finetune_logloss": last, "head_train_loss": head_train,
           "first_train_loss": first_train}
    views = "" if kept is None else f" ({kept:.3f} kept, over its test-time views)"
    lost = first_train is not None and head_train is not None and first_train > 3 * head_train + 0.1
    if lost and not pretrained:
        reading = (f"from scratch (pretrained: false): the head's start was a random network's features, so the "
                   f"first epoch's training loss {first_train:.3f} against the head's {head_train:.3f} is expected; "
                   + (f"finetuning then paid: {start:.3f} (the head) -> {last:.3f}{views}" if last < start else
                      f"it ended at {last:.3f}{views} against the head's {start:.3f}: train longer"))
    elif lost:
        reading = (f"the start was lost: the first epoch's training loss {first_train:.3f} against the head's "
                   f"{head_train:.3f}; suspect the backbone's batch norm statistics (finetune.batch_norm) or too "
                   "high a learning rate at the switch (finetune.lr, warmup)")
    elif last >= start:
        reading = (f"finetuning lost to its head: {last:.3f} at its last epoch{views} against the head's {start:.3f} "
                   "(both one view), though the start was kept. For this run: the ensemble weighs the head and the "
                   "finetuned network by the other folds' scores (ensemble.members), so the submission need not "
                   "lose by it; to make finetuning pay, more steps (finetune.min_steps, epochs) or, if it "
                   "overfits, more augmentation or a lower lr")
    else:
        reading = f"finetuning paid: {start:.3f} (the head) -> {last:.3f}{views}"
    return {**out, "reading": reading}
