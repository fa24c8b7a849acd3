"""The one training loop, shared by the head (on features) and finetuning (on images)."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, log_loss
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data import TTA

KAGGLE_EPS = 1e-15


def pick_device(name: str) -> torch.device:
    """`auto` -> the GPU when there is one; `cuda` without a GPU is an error, not a silent CPU run."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for in params.yaml but torch sees no GPU; use 'auto' or 'cpu'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)  # bf16 needs no loss scaling
    return contextlib.nullcontext()


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True).float()
    if channels_last and x.ndim == 4 and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(model, loader, optimizer, scheduler, device, amp=False, channels_last=False) -> float:
    """One pass over `loader`, stepping `scheduler` per batch; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for x, y in tqdm(loader, desc="train", leave=False, unit="batch", disable=None):
        x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def predict(model, loader, device, views=("identity",), amp=False, channels_last=False) -> np.ndarray:
    """Class probabilities for every row of `loader` (in order), averaged over the test-time `views`."""
    model.eval()
    out = []
    for batch in tqdm(loader, desc="predict", leave=False, unit="batch", disable=None):
        x = _to(batch[0] if isinstance(batch, (list, tuple)) else batch, device, channels_last)
        probs = 0
        for view in views:
            with autocast(device, amp):
                logits = model(TTA[view](x))
            probs = probs + logits.float().softmax(dim=1)
        out.append((probs / len(views)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Kaggle's log loss (rows rescaled to sum to 1, clipped at 1e-15) and accuracy."""
    p = np.clip(probs / probs.sum(axis=1, keepdims=True), KAGGLE_EPS, 1 - KAGGLE_EPS)
    p = p / p.sum(axis=1, keepdims=True)
    return {
        "logloss": float(log_loss(labels, p, labels=np.arange(probs.shape[1]))),
        "accuracy": float(accuracy_score(labels, probs.argmax(axis=1))),
    }


def one_cycle(optimizer, epochs: int, steps_per_epoch: int, warmup: float):
    """Warm up from small to the peak learning rate, then anneal to near zero (start small, go high, end small)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=max(1, epochs * steps_per_epoch),
        pct_start=max(warmup, 1e-3),
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
) -> tuple[int, list[dict]]:
    """Train for `epochs`, keep the weights of the epoch with the best validation log loss (epoch 0 = as given).

    Returns the best epoch and the per-epoch history; `model` holds the best weights afterwards.
    """
    history = [{"epoch": 0, **scores(predict(model, val_loader, device, amp=amp), val_labels)}]
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        train_loss = train_one_epoch(model, train_loader, optimizer, scheduler, device, amp, channels_last)
        val = scores(predict(model, val_loader, device, amp=amp, channels_last=channels_last), val_labels)
        history.append({"epoch": epoch, "train_loss": train_loss, **val})
        if live is not None:
            live.log_metric("train/loss", train_loss)
            live.log_metric("val/logloss", val["logloss"])
            live.log_metric("val/accuracy", val["accuracy"])
            live.log_metric("lr", optimizer.param_groups[-1]["lr"])
            live.next_step()
        if val["logloss"] < history[best_epoch]["logloss"]:
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        tqdm.write(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val logloss {val['logloss']:.4f}, "
                   f"accuracy {val['accuracy']:.4f}")
    model.load_state_dict(best_state)
    return best_epoch, history
