"""The one training loop, shared by the head (on features) and finetuning (on images)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pipeline.data.datasets import TTA
from pipeline.scoring.metrics import scores
from pipeline.training.devices import autocast, grad_scaler, is_main, to_device


def train_step(model, x, y, optimizer, device, amp=False, channels_last=False, scaler=None, recipe=None,
               step: int = 0) -> float:
    """One optimiser step on the batch (x, y); returns its loss. `scaler` scales the loss under float16.
    `recipe` (finetuning's `Recipe`): mixes the batch, scores it on its soft or smoothed targets and moves the EMA
    after the step; `step` counts the steps taken before this one."""
    x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
    target = y
    if recipe is not None:
        x, target = recipe.inputs(x, y, step)
    with autocast(device, amp):
        logits = model(x)
        loss = F.cross_entropy(logits, y) if recipe is None else recipe.loss(logits, target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if recipe is not None:
        recipe.after_step(step + 1)
    return loss.item()


def train_one_epoch(model, loader, optimizer, scheduler, device, amp=False, channels_last=False, scaler=None,
                    timing: dict | None = None, recipe=None) -> float:
    """One pass over `loader`, stepping `scheduler` per batch; returns the mean training loss. `scaler`: the run's
    loss scaler (one for the whole run: a fresh one each epoch would restart its scale while the schedule goes on).
    `timing`, when given, gets the epoch's seconds and those spent waiting for the loader's next batch (each step
    ends in `loss.item()`, so a GPU's work is done when the wait is timed). `recipe`: as `train_step`'s, told the
    schedule's step count (which a checkpoint restores)."""
    model.train()
    total, count, waited = 0.0, 0, 0.0
    scaler = scaler if scaler is not None else grad_scaler(device, amp)
    start = asked = time.perf_counter()
    for x, y in tqdm(loader, desc="train", leave=False, unit="batch", disable=None if is_main() else True):
        waited += time.perf_counter() - asked
        total += train_step(model, x, y, optimizer, device, amp, channels_last, scaler, recipe,
                            scheduler.last_epoch) * len(y)
        scheduler.step()
        count += len(y)
        asked = time.perf_counter()
    if timing is not None:
        timing.update(seconds=time.perf_counter() - start, waiting=waited)
    if _parallel():  # every process's share of the epoch's loss
        import torch.distributed as td

        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        td.all_reduce(sums)
        total, count = sums.tolist()
    return total / max(count, 1)


def _parallel() -> bool:
    import torch.distributed as td

    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


@torch.no_grad()
def predict(model, loader, device, views=("identity",), amp=False, channels_last=False) -> np.ndarray:
    """Class probabilities for every row of `loader` (in order), averaged over the test-time `views`."""
    model.eval()
    sharded = isinstance(loader.sampler, DistributedSampler)
    if sharded:  # batch norm statistics as rank 0 has them (DDP syncs them only as each training step starts)
        import torch.distributed as td

        for buffer in model.buffers():
            td.broadcast(buffer, src=0)
    out = []
    for batch in tqdm(loader, desc="predict", leave=False, unit="batch", disable=None if is_main() else True):
        x = to_device(batch[0] if isinstance(batch, (list, tuple)) else batch, device, channels_last)
        probs = 0
        for view in views:
            with autocast(device, amp):
                logits = model(TTA[view](x))
            probs = probs + logits.float().softmax(dim=1)
        out.append((probs / len(views)).cpu().numpy())
    probs = np.concatenate(out).astype(np.float64)
    if sharded:
        probs = _gather(probs, loader.sampler)
    return probs


def _gather(probs: np.ndarray, sampler: DistributedSampler) -> np.ndarray:
    """Every process's share of a `DistributedSampler` (rank r holds rows r, r + world, ..., padded to equal
    shares) put back into the dataset's row order, on every process."""
    import torch.distributed as td

    shares = [None] * td.get_world_size()
    td.all_gather_object(shares, probs)
    out = np.empty((sum(len(s) for s in shares), probs.shape[1]))
    for rank, share in enumerate(shares):
        out[rank :: len(shares)] = share
    return out[: len(sampler.dataset)]


def lr_range(model, loader, optimizer, device, start: float, end: float, steps: int, amp=False,
             channels_last=False, smoothing: float = 0.9) -> tuple[list[float], list[float]]:
    """The learning-rate range test: raise the rate exponentially from `start` to `end`, one batch per step,
    recording the smoothed training loss; stop once it explodes (4x its minimum). Param groups keep their
    ratios to the last group (finetuning's lower backbone rate). Returns the rates and losses."""
    ratios = [g["lr"] / optimizer.param_groups[-1]["lr"] for g in optimizer.param_groups]
    factor = (end / start) ** (1 / max(steps - 1, 1))
    model.train()
    rates, losses, average, best = [], [], 0.0, float("inf")
    scaler = grad_scaler(device, amp)
    batches = iter(())
    for step in tqdm(range(steps), desc="lr range test", unit="step", leave=False, disable=None):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        rate = start * factor**step
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = rate * ratio
        average = smoothing * average + (1 - smoothing) * train_step(model, x, y, optimizer, device, amp,
                                                                     channels_last, scaler)
        smoothed = average / (1 - smoothing ** (step + 1))  # bias-corrected, as Adam's moments
        if not np.isfinite(smoothed):
            break  # diverged: a NaN must not become the curve's "minimum"
        rates.append(rate)
        losses.append(smoothed)
        if smoothed > 4 * best:
            break
        best = min(best, smoothed)
    return rates, losses


def fold_seed(seed: int, fold: int) -> int:
    """One fold's seed, mixed from (seed, fold): `seed + fold` would give model seed 43's fold 0 the same draws as
    model seed 42's fold 1."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def one_cycle(optimizer, epochs: int, steps_per_epoch: int, warmup: float):
    """Warm up from small to the peak learning rate, then anneal to near zero (start small, go high, end small)."""
    total = max(2, epochs * steps_per_epoch)
    pct = max(warmup, 1e-3)
    if abs(pct * total - 1) < 1e-6:  # OneCycleLR divides by zero when its warm-up would end on step 0
        pct += 0.5 / total
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=total,
        pct_start=pct,
        anneal_strategy="cos",
        div_factor=25.0,
        final_div_factor=1e3,
    )


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    val_labels: np.ndarray,
    optimizer,
    scheduler,
    epochs: int,
    device: torch.device,
    live=None,
    amp: bool = False,
    channels_last: bool = False,
    before_epoch=None,
    after_epoch=None,
    history: list[dict] | None = None,
    train_model: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    recipe=None,
) -> list[dict]:
    """Train for exactly `epochs` on the fixed schedule; `model` keeps the last epoch's weights.

    Nothing is chosen on the validation rows (no best epoch, no early stop), so the out-of-fold predictions made
    from them next cannot flatter the fold's score. Their scores are only recorded: the learning curve, with
    epoch 0 being the weights as given. dvclive's step is the epoch, as printed. `before_epoch(epoch)`, when
    given, runs before each training epoch and returns what to record with it (e.g. a dropout schedule's rate);
    `after_epoch(epoch, history)` after each (a checkpoint). `history`: the records of epochs already done (a
    resumed run), which go to `live` again and are not re-run. `train_model`: what trains, when not `model`
    itself (its data-parallel or compiled wrapper). `scaler`: the run's loss scaler, when the caller keeps it (a
    checkpoint); else one for this call. `recipe`: finetuning's `Recipe` (`train_step`); `model` is then its
    `evaluated` network.
    """
    history = list(history or [])
    scaler = scaler if scaler is not None else grad_scaler(device, amp)
    for record in history:
        _log(live, record)
    for epoch in range(len(history), epochs + 1):
        record = {"epoch": epoch}
        if epoch and before_epoch is not None:
            record.update(before_epoch(epoch))
        timing = {}
        if epoch:
            trained = model if train_model is None else train_model  # (a compiled module refuses bool())
            record["train_loss"] = train_one_epoch(trained, train_loader, optimizer, scheduler, device, amp,
                                                   channels_last, scaler, timing, recipe)
        record.update(scores(predict(model, val_loader, device, amp=amp, channels_last=channels_last), val_labels))
        record["lr"] = optimizer.param_groups[-1]["lr"]
        history.append(record)
        _log(live, record)
        if epoch and is_main():
            # printed, not recorded: timings differ run to run, the outputs must not
            tqdm.write(f"epoch {epoch}/{epochs}: train loss {record['train_loss']:.4f}, val logloss "
                       f"{record['logloss']:.4f}, accuracy {record['accuracy']:.4f}; {timing['seconds']:.0f} s, "
                       f"waiting on input {timing['waiting'] / max(timing['seconds'], 1e-9):.0%}")
        if after_epoch is not None:
            after_epoch(epoch, history)
    return history


def _log(live, record: dict) -> None:
    if live is None:
        return
    live.step = record["epoch"]
    for name, key in (("train/loss", "train_loss"), ("val/logloss", "logloss"), ("val/accuracy", "accuracy"),
                      ("lr", "lr")):
        if key in record:
            live.log_metric(name, record[key])
