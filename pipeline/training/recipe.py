"""Finetuning's modern recipe over the plain training step, each part a `finetune` param and off by default: EMA of
the weights (timm's `ModelEmaV3`), mixup/cutmix (timm's `Mixup`, trained on its soft targets with timm's
`SoftTargetCrossEntropy`) and label smoothing. All off, a step is the plain cross-entropy step, bit for bit."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Recipe:
    """What `engine.train_step` adds to a step for finetuning params `ft`: `inputs` mixes a batch (soft targets),
    `loss` scores logits against those targets, `after_step` moves the EMA. `evaluated` is the network that is
    scored, predicts and is saved: the EMA's copy when on, else `network` itself."""

    def __init__(self, ft, num_classes: int, network: nn.Module, seed: tuple[int, ...]):
        from timm.data import Mixup
        from timm.utils import ModelEmaV3

        self.network, self.seed, self.smoothing = network, tuple(seed), ft.label_smoothing
        self.mixup = None
        if ft.mixup or ft.cutmix:  # timm's Mixup takes the smoothing into its soft targets
            self.mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, prob=ft.mixup_prob,
                               label_smoothing=ft.label_smoothing, num_classes=num_classes)
        # timm's warm-up (its --model-ema-warmup): decay 1 - (1 + step)^(-2/3), capped at `ema_decay`, so a short
        # run's average is not mostly its starting weights
        self.ema = ModelEmaV3(network, decay=ft.ema_decay, use_warmup=True) if ft.ema_decay else None

    @property
    def evaluated(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.network

    def inputs(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch to train on and its targets: (x, y) as given, or mixed images with soft targets. timm's Mixup
        draws from numpy's global random state: each step draws from its own seed (the run's, the step), so a
        resumed run mixes as an uninterrupted one and no other user of that state sees a change."""
        if self.mixup is None:
            return x, y
        saved = np.random.get_state()
        np.random.seed(np.random.SeedSequence([*self.seed, step]).generate_state(1)[0])
        try:
            return self.mixup(x, y)
        finally:
            np.random.set_state(saved)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            return SoftTargetCrossEntropy()(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.smoothing)

    def after_step(self, step: int) -> None:
        """After optimizer step number `step` (1 for the first): the EMA follows the trained weights."""
        if self.ema is not None:
            self.ema.update(self.network, step=step)
