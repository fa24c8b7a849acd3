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
from pipeline.weights import package_state_dict


def create_backbone(fp: FeaturesParams, pretrained: bool | None = None, key: str = "features",
                    image_size: tuple[int, int] | None = None) -> nn.Module:
    """The timm model named in `features.backbone`, without its classifier (outputs pooled features).

    With `pretrained`, weights come from where `features.weights` says: the Hugging Face hub (online), an
    installed weights package (offline), or `weights_file` (offline), always loaded by timm itself. `key` is the
    params section, named in errors; `image_size` (height, width) is checked against models that take one size.
    """
    name = fp.backbone
    pretrained = fp.pretrained if pretrained is None else pretrained
    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close timm names: {', '.join(close)}." if close else " See timm.list_models() for the names."
        raise ModelError(f"{key}.backbone: timm has no model {name!r}.{hint}")
    overlay = _weights_overlay(fp, key) if pretrained else None
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay)
    except Exception as e:  # the hub's errors come from several libraries (httpx, requests, huggingface_hub)
        where = {"hub": "the Hugging Face hub", "file": fp.weights_file, "package": "the weights package"}
        offline = " Offline, use weights: package or weights: file." if fp.weights == "hub" else ""
        raise ModelError(
            f"{key}.backbone {name!r}: timm could not load its weights from {where[fp.weights]} "
            f"({type(e).__name__}: {e}).{offline} Or set pretrained: false to start from random weights."
        ) from None
    _check_input_size(model, name, key, image_size)
    return model


def _weights_overlay(fp: FeaturesParams, key: str) -> dict | None:
    """timm's `pretrained_cfg_overlay` that points it at local weights; None for the hub."""
    if fp.weights == "file":
        path = Path(fp.weights_file).expanduser()
        if not path.is_file():
            raise ModelError(
                f"{key}.weights_file: {str(path)!r} does not exist; give the path to a .safetensors, .pth or .bin "
                f"file of weights for {fp.backbone!r}, or use weights: hub (online) or weights: package."
            )
        return {"file": str(path)}
    if fp.weights == "package":
        full = timm.create_model(fp.backbone, pretrained=False)  # the package holds the classifier too
        return {"state_dict": package_state_dict(fp.backbone, full.state_dict(), key)}
    return None


def _check_input_size(model: nn.Module, name: str, key: str, image_size: tuple[int, int] | None) -> None:
    cfg = model.pretrained_cfg
    if image_size is None or not cfg.get("fixed_input_size"):
        return
    want = tuple(cfg["input_size"][1:])
    if tuple(image_size) != want:
        section = key.rsplit(".", 1)[0] + ".prepare" if "." in key else "prepare"
        raise ModelError(
            f"{key}.backbone {name!r} takes only {want[0]}x{want[1]} images (timm's fixed_input_size), but the "
            f"image cache is {image_size[0]}x{image_size[1]}. Set {section}.image_size: [{want[0]}, {want[1]}], "
            "or choose a convolutional backbone, which takes any size."
        )


def create_head(in_features: int, num_classes: int, hidden: int, dropout: float,
                input_dropout: float | None = None) -> nn.Sequential:
    """Batch norm and dropout around a hidden dense layer, as in fast.ai's lesson 3 head: `input_dropout` on the
    features (default: half of `dropout`), `dropout` before the output layer."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Dropout(dropout / 2 if input_dropout is None else input_dropout),
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
