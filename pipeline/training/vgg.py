"""A VGG-style CNN trained from scratch: the MNIST network of fast.ai's 2016 lesson 3, as a timm model.

The lesson's convolution and max-pooling section builds it from conv-conv-max-pool blocks. Each max pool halves
the resolution, so the next block doubles the filters to make up for what was lost; batch norm follows every
layer, so it trains fast and at high learning rates; a dense head with dropout sits on top. It is registered with
timm (`vgg_lesson`, and `vgg_lesson_wide` with twice the filters, a second ensemble member) so the pipeline uses it
like any other backbone: `timm.create_model("vgg_lesson", pretrained=False, num_classes=0)` after
`import pipeline.training.vgg`. It exists to be trained from scratch, on digits or small photos: no pretrained weights
exist, and asking for them is an error that says so.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Tuple, Union

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

__all__ = ["VggLesson", "NoPretrainedWeightsError"]

HIDDEN = 512  # the lesson's dense layer


class NoPretrainedWeightsError(RuntimeError):
    """`pretrained=True` for a model that only exists untrained."""


def _conv_bn_relu(cin: int, cout: int, **dd) -> nn.Sequential:
    # no conv bias: the batch norm right after it has its own shift
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, 3, padding=1, bias=False, **dd),
                                     bn=nn.BatchNorm2d(cout, **dd), act=nn.ReLU(inplace=True)))


class VggLesson(nn.Module):
    """Stem conv, then one stage per width: two 3x3 conv-BN-ReLU and a 2x2 max pool; global pooling; with
    `num_classes` the lesson's head, Linear(512)-BN-ReLU-Dropout-Linear. Padded convs keep every size until the
    pools, so any input of at least 2**len(widths) pixels works (8 px for three stages)."""

    def __init__(self, widths: Tuple[int, ...] = (32, 64, 128), in_chans: int = 3, num_classes: int = 10,
                 global_pool: str = "avg", drop_rate: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        self.grad_checkpointing = False
        # the stem takes any number of channels to the first width, so every stage is the same whatever the input
        self.stem = _conv_bn_relu(in_chans, widths[0], **dd)
        stages, prev, self.feature_info = [], widths[0], []
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(_conv_bn_relu(prev, w, **dd), _conv_bn_relu(w, w, **dd), nn.MaxPool2d(2)))
            self.feature_info.append(dict(num_chs=w, reduction=2 ** (i + 1), module=f"stages.{i}"))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self._make_head(num_classes, **dd)

    def _make_head(self, num_classes: int, **dd) -> None:
        in_features = self.num_features * self.global_pool.feat_mult()
        if num_classes > 0:  # the hidden layer belongs to the classifier: without one the pooled features come out
            self.pre_logits = nn.Sequential(nn.Linear(in_features, HIDDEN, bias=False, **dd),
                                            nn.BatchNorm1d(HIDDEN, **dd), nn.ReLU(inplace=True))
            self.fc = nn.Linear(HIDDEN, num_classes, **dd)
        else:
            self.pre_logits, self.fc = nn.Identity(), nn.Identity()
        self.head_hidden_size = HIDDEN if num_classes > 0 else in_features

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # as in timm's other models, the backward's recomputation also updates batch norm's running statistics
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = dict(device=self.stem.conv.weight.device, dtype=self.stem.conv.weight.dtype)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self._make_head(num_classes, **dd)
        for m in (self.global_pool, self.pre_logits, self.fc):  # only the new ones: frozen modules stay in eval
            m.train(self.training)

    def _run(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(stage, x)
        return stage(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False,
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's: the stage outputs at `indices` (last n if int, all if None); `norm` is unused (no final norm)."""
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early and not torch.jit.is_scripting() else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = self._run(stage, x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """timm's: drop the stages after the last index taken; the head goes too (it is sized for the last stage)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pre_logits(self.global_pool(x)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    # No weights, so no training set's statistics to match: mean 0.5 / std 0.25 put 0-1 pixels around 0 with
    # roughly unit spread (photos' pixel std is about 0.25), for digits and photos alike; the batch norm after the
    # first conv undoes any remaining scale. 28x28 is the lesson's MNIST, but any size works (not fixed).
    return dict(url="", num_classes=10, input_size=(3, 28, 28), pool_size=(3, 3), fixed_input_size=False,
                interpolation="bilinear", crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3,
                first_conv="stem.conv", classifier="fc", **kwargs)


default_cfgs = generate_default_cfgs({"vgg_lesson": _cfg(), "vgg_lesson_wide": _cfg()})

_WEIGHT_SOURCES = ("url", "file", "state_dict", "hf_hub_id")


def _create(variant: str, widths: Tuple[int, ...], pretrained: bool = False, **kwargs) -> VggLesson:
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    cfg = kwargs.get("pretrained_cfg")
    given = {**(cfg if isinstance(cfg, dict) else {}), **overlay}
    if pretrained and not any(given.get(k) for k in _WEIGHT_SOURCES):  # weights of one's own may still be loaded
        raise NoPretrainedWeightsError(
            f"{variant} is trained from scratch: no pretrained weights exist for it. Set features.pretrained: "
            f"false (timm.create_model(..., pretrained=False)).")
    # the data config follows the channels actually used, so a 1-channel model normalises with 1-channel stats
    chans = kwargs.get("in_chans", 3)
    overlay = {"input_size": (chans, 28, 28), "mean": (0.5,) * chans, "std": (0.25,) * chans, **overlay}
    return build_model_with_cfg(VggLesson, variant, pretrained, pretrained_cfg_overlay=overlay, widths=widths,
                                feature_cfg=dict(out_indices=tuple(range(len(widths))), flatten_sequential=True),
                                **kwargs)


@register_model
def vgg_lesson(pretrained: bool = False, **kwargs) -> VggLesson:
    """The lesson's widths: 32, 64, 128 filters."""
    return _create("vgg_lesson", (32, 64, 128), pretrained, **kwargs)


@register_model
def vgg_lesson_wide(pretrained: bool = False, **kwargs) -> VggLesson:
    """Twice the filters: a different member for ensembles."""
    return _create("vgg_lesson_wide", (64, 128, 256), pretrained, **kwargs)
