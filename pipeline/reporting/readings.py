"""Learning curves read the lesson's way, in one line each: what the report shows and the finetune stage prints."""

from __future__ import annotations

NOISE = 0.005
"""Log-loss differences smaller than this are not read as a trend (a near-perfect fold's 0.0001 -> 0.0002 is not
over-fitting)."""


def diagnose(history: list[dict]) -> str:
    """One line reading a fold's learning curve the lesson's way (training loss includes dropout and
    augmentation, so it sitting above validation means the model could fit more)."""
    last = history[-1]
    train, val = last.get("train_loss"), last["logloss"]
    if train is None:
        return "no training epochs"
    vals = [h["logloss"] for h in history[1:]]
    if len(vals) >= 2 and vals[-1] > min(vals) * 1.05 and vals[-1] - min(vals) > NOISE:
        return (f"over-fitting: validation rose from its low {min(vals):.3f} to {vals[-1]:.3f} by the last epoch; "
                "fewer epochs, more dropout or augmentation")
    if train > val + NOISE:
        return (f"under-fitting: training loss {train:.3f} is above validation {val:.3f}; train longer, or use less "
                "dropout or augmentation")
    if val > 2 * train and val - train > 0.1:
        return (f"over-fitting: validation {val:.3f} is over twice the training loss {train:.3f}; more dropout, "
                "augmentation or data")
    return f"fitting well: training {train:.3f}, validation {val:.3f}, still falling or flat at the end"


def finetune_health(head: list[dict], finetune: list[dict]) -> dict:
    """Finetuning against the head it starts from (issue 17): its epoch 0 is the head's validation score, its
    first epoch's training loss should stay near the head's last one (several times the head's, up to ln(C), means
    the network stopped computing the features the head learnt on: State Farm's demo went 0.14 -> 1.48), and its last epoch should beat the
    head. Returns the figures and a one-line reading."""
    start, last = finetune[0]["logloss"], finetune[-1]["logloss"]
    head_train = head[-1].get("train_loss") if head else None
    first_train = finetune[1]["train_loss"] if len(finetune) > 1 else None
    out = {"head_logloss": start, "finetune_logloss": last, "head_train_loss": head_train,
           "first_train_loss": first_train}
    lost = first_train is not None and head_train is not None and first_train > 3 * head_train + 0.1
    if lost:
        reading = (f"the start was lost: the first epoch's training loss {first_train:.3f} against the head's "
                   f"{head_train:.3f}; suspect the backbone's batch norm statistics (finetune.batch_norm) or too "
                   "high a learning rate at the switch (finetune.lr, warmup)")
    elif last >= start:
        reading = (f"finetuning lost to its head ({last:.3f} against {start:.3f}) though the start was kept: too "
                   "few steps to improve (finetune.min_steps, epochs), or it overfits (more augmentation, lower lr)")
    else:
        reading = f"finetuning paid: {start:.3f} (the head) -> {last:.3f}"
    return {**out, "reading": reading}
