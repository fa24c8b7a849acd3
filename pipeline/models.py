"""Backbones from timm, the dense head, and the two joined for finetuning."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.config import FeaturesParams
from pipeline.errors import ModelError


def create_backbone(fp: FeaturesParams, pretrained: bool | None = None, key: str = "features") -> nn.Module:
    """The timm model named in `features.backbone`, without its classifier (outputs pooled features).

    Weights: timm's pretrained weights from the hub, or from `weights_file` (offline), when `pretrained`.
    `key` is the params section, named in errors.
    """
    name = fp.backbone
    pretrained = fp.pretrained if pretrained is None else pretrained
    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close timm names: {', '.join(close)}." if close else " See timm.list_models() for the names."
        raise ModelError(f"{key}.backbone: timm has no model {name!r}.{hint}")
    kwargs = {}
    if pretrained and fp.weights_file:
        path = Path(fp.weights_file).expanduser()
        if not path.is_file():
            raise ModelError(
                f"{key}.weights_file: {str(path)!r} does not exist; give the path to a .safetensors, .pth or "
                ".bin file of weights for {name!r}, or set it to null to load timm's weights from the hub."
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except RuntimeError as e:
        raise ModelError(
            f"{key}.backbone {name!r}: timm could not load its weights ({e}). Offline, set "
            f"{key}.weights_file to a local weights file, or pretrained: false."
        ) from None


def create_head(in_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """Batch norm and dropout around a hidden dense layer, as in fast.ai's lesson 3 head."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Dropout(dropout / 2),
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class Classifier(nn.Module):
    """Backbone then head: the network that finetuning trains end to end."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def save_weights(module: nn.Module, path: Path) -> None:
    """A module's exact weights as safetensors (contiguous CPU copies, as safetensors requires)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, path)


def normalisation(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone was trained with (timm's data config)."""
    cfg = timm.data.resolve_model_data_config(backbone)
    return tuple(cfg["mean"]), tuple(cfg["std"])
