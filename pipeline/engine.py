"""The one training loop, shared by the head (on features) and finetuning (on images)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pipeline.data import TTA
from pipeline.errors import DeviceError
from pipeline.machine import usable_cpus
from pipeline.scoring import scores


def pick_device(name: str) -> torch.device:
    """`auto` -> the GPU when there is one; `cuda` without a GPU is an error, not a silent CPU run."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: 'cuda' was asked for in params.yaml but torch sees no GPU; use 'auto' or 'cpu'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel processes `torchrun` started (one, without torchrun)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes outputs, curves and progress."""
        return self.rank == 0


@contextlib.contextmanager
def distributed(device_name: str):
    """Yield this process's `Workers`. Started by `torchrun --nproc-per-node N`, the N processes join one
    process group (NCCL, each on its own GPU `LOCAL_RANK`; gloo on CPUs) for data-parallel training; otherwise
    this is the only process. The group is left on exit, also after an error."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        yield Workers(0, 1, device)
        return
    import torch.distributed as td

    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DeviceError(f"torchrun started process {local} on this machine, but torch sees "
                              f"{torch.cuda.device_count()} GPU(s); give launch's --nproc-per-node at most that.")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Workers(td.get_rank(), world, device)
        td.barrier()  # leave together: gloo aborts a process that tears down while another still writes
    finally:
        td.destroy_process_group()


def is_main() -> bool:
    import torch.distributed as td

    return not td.is_available() or not td.is_initialized() or td.get_rank() == 0


def loader_workers(asked: int, device: torch.device, processes: int = 1) -> int:
    """DataLoader worker processes: as asked, or with -1 none on a CPU (the network's threads use every core, so
    workers would only compete with it: measured in benchmarks/features_speed.py) and, on a GPU, one per core of
    this process's share of them, up to 8."""
    if asked >= 0:
        return asked
    if device.type == "cpu":
        return 0
    here = int(os.environ.get("LOCAL_WORLD_SIZE", processes))  # processes on this machine (torchrun's)
    return max(1, min(8, usable_cpus() // here))


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU computes it natively (Ampere and later: no loss scaling needed); float16 elsewhere (T4,
    V100, P100 emulate bf16 slowly), which needs a gradient scaler when training."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype(device))
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast (a no-op otherwise: CPU, no AMP, or bf16)."""
    enabled = amp and device.type == "cuda" and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=enabled)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on `device` as float32 (images arrive as uint8 pixel values: a quarter of the bytes to move; the
    network normalises them there), channels-last when asked (the network's layout)."""
    x = x.to(device, non_blocking=True).float()
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_step(model, x, y, optimizer, device, amp=False, channels_last=False, scaler=None) -> float:
    """One optimiser step on the batch (x, y); returns its loss. `scaler` scales the loss under float16."""
    x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
    with autocast(device, amp):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.item()


def train_one_epoch(model, loader, optimizer, scheduler, device, amp=False, channels_last=False, scaler=None) -> float:
    """One pass over `loader`, stepping `scheduler` per batch; returns the mean training loss. `scaler`: the run's
    loss scaler (one for the whole run: a fresh one each epoch would restart its scale while the schedule goes on)."""
    model.train()
    total, count = 0.0, 0
    scaler = scaler if scaler is not None else grad_scaler(device, amp)
    for x, y in tqdm(loader, desc="train", leave=False, unit="batch", disable=None if is_main() else True):
        total += train_step(model, x, y, optimizer, device, amp, channels_last, scaler) * len(y)
        scheduler.step()
        count += len(y)
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
) -> list[dict]:
    """Train for exactly `epochs` on the fixed schedule; `model` keeps the last epoch's weights.

    Nothing is chosen on the validation rows (no best epoch, no early stop), so the out-of-fold predictions made
    from them next cannot flatter the fold's score. Their scores are only recorded: the learning curve, with
    epoch 0 being the weights as given. dvclive's step is the epoch, as printed. `before_epoch(epoch)`, when
    given, runs before each training epoch and returns what to record with it (e.g. a dropout schedule's rate);
    `after_epoch(epoch, history)` after each (a checkpoint). `history`: the records of epochs already done (a
    resumed run), which go to `live` again and are not re-run. `train_model`: what trains, when not `model`
    itself (its data-parallel or compiled wrapper). `scaler`: the run's loss scaler, when the caller keeps it (a
    checkpoint); else one for this call.
    """
    history = list(history or [])
    scaler = scaler if scaler is not None else grad_scaler(device, amp)
    for record in history:
        _log(live, record)
    for epoch in range(len(history), epochs + 1):
        record = {"epoch": epoch}
        if epoch and before_epoch is not None:
            record.update(before_epoch(epoch))
        if epoch:
            trained = model if train_model is None else train_model  # (a compiled module refuses bool())
            record["train_loss"] = train_one_epoch(trained, train_loader, optimizer, scheduler, device, amp,
                                                   channels_last, scaler)
        record.update(scores(predict(model, val_loader, device, amp=amp, channels_last=channels_last), val_labels))
        record["lr"] = optimizer.param_groups[-1]["lr"]
        history.append(record)
        _log(live, record)
        if epoch and is_main():
            tqdm.write(f"epoch {epoch}/{epochs}: train loss {record['train_loss']:.4f}, val logloss "
                       f"{record['logloss']:.4f}, accuracy {record['accuracy']:.4f}")
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
