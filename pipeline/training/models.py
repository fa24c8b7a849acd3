"""Backbones from timm, the dense head, and the two joined for finetuning."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.core.errors import ModelError
from pipeline.core.sections import FeaturesParams
from pipeline.training.weights import package_state_dict


def create_backbone(fp: FeaturesParams, pretrained: bool | None = None, key: str = "features",
                    image_size: tuple[int, int] | None = None, in_chans: int = 3) -> nn.Module:
    """The timm model named in `features.backbone`, without its classifier (outputs pooled features).

    With `pretrained`, weights come from where `features.weights` says: the Hugging Face hub (online), an
    installed weights package (offline), or `weights_file` (offline), always loaded by timm itself. `key` is the
    params section, named in errors; `image_size` (height, width) is checked against models that take one size.
    With `in_chans` 1 (greyscale images), timm sums pretrained first-layer filters over the colour channels.
    """
    import timm  # here: the head stage needs only torch (timm's import costs seconds per stage)

    import pipeline.training.vgg  # noqa: F401  (registers the from-scratch backbones with timm)

    name = fp.backbone
    pretrained = fp.pretrained if pretrained is None else pretrained
    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close timm names: {', '.join(close)}." if close else " See timm.list_models() for the names."
        raise ModelError(f"{key}.backbone: timm has no model {name!r}.{hint}")
    overlay = _weights_overlay(fp, key) if pretrained else None
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay,
                                  in_chans=in_chans)
    except pipeline.training.vgg.NoPretrainedWeightsError as e:
        raise ModelError(f"{key}.backbone {name!r}: {e}") from None
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
        import timm

        full = timm.create_model(fp.backbone, pretrained=False)  # the package holds the classifier too
        return {"state_dict": package_state_dict(fp.backbone, full.state_dict(), key)}
    return None


def _check_input_size(model: nn.Module, name: str, key: str, image_size: tuple[int, int] | None) -> None:
    cfg = model.pretrained_cfg
    if image_size is None or not cfg.get("fixed_input_size"):
        return
    want = tuple(cfg["input_size"][1:])
    if tuple(image_size) != want:
        section = key.split(".")[0] + ".prepare" if "." in key else "prepare"
        raise ModelError(
            f"{key}.backbone {name!r} takes only {want[0]}x{want[1]} images (timm's fixed_input_size), but it would "
            f"see {image_size[0]}x{image_size[1]}. Set {section}.image_size: [{want[0]}, {want[1]}] (or this "
            f"model's {key}.image_size), or choose a convolutional backbone, which takes any size."
        )


class Trunk(nn.Module):
    """A timm backbone cut after feature level `cut` (`features.cut`): the layers after it are dropped (timm's
    `prune_intermediate_layers`) and it returns that level's spatial map, (N, C, H, W). With cut -1 it is the whole
    backbone with its pooling, returning its pooled features (N, D); `num_features` is the channels at the cut (or
    timm's `num_features` for the whole backbone).

    It takes pixel values (0-255, as the uint8 cache holds them) and normalises them itself with the mean and std
    the backbone was trained with: loaders then move uint8 batches, a quarter of float32's bytes, and the
    normalisation runs on the device instead of in every loader worker. (Buffers not saved: the weights files
    hold only the network.)"""

    def __init__(self, model: nn.Module, cut: int, key: str = "features", channels: int = 3):
        super().__init__()
        levels = len(getattr(model, "feature_info", []) or [])
        if cut >= levels:
            raise ModelError(f"{key}.cut: {model.pretrained_cfg.get('architecture', type(model).__name__)} has "
                             f"{levels} feature levels (0 to {levels - 1}); got {cut}. Use -1 for the whole backbone.")
        if cut >= 0:
            model.prune_intermediate_layers([cut], prune_head=True)
        self.model, self.cut = model, cut
        self.num_features = model.num_features if cut < 0 else model.feature_info[cut]["num_chs"]
        self.pretrained_cfg = model.pretrained_cfg  # timm's data config reads it
        mean, std = normalisation(model, channels)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel values (0-255, any dtype) -> the backbone's normalised float input."""
        return (x.float() - self.pixel_mean) / self.pixel_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x)
        if self.cut < 0:
            return self.model(x)
        return self.model.forward_intermediates(x, indices=[self.cut], intermediates_only=True, stop_early=True)[0]

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every feature level's map up to the cut (the report's activation maps)."""
        last = self.cut if self.cut >= 0 else len(self.model.feature_info) - 1
        return self.model.forward_intermediates(self.normalise(x), indices=list(range(last + 1)), intermediates_only=True,
                                                stop_early=True)


def create_trunk(fp: FeaturesParams, pretrained: bool | None = None, key: str = "features",
                 image_size: tuple[int, int] | None = None, in_chans: int = 3) -> Trunk:
    """`create_backbone` cut where `features.cut` says, for images of `in_chans` channels."""
    return Trunk(create_backbone(fp, pretrained, key, image_size, in_chans), fp.cut, key, in_chans)


def create_head(in_features: int, num_classes: int, hidden: int, dropout: float,
                input_dropout: float | None = None, conv_channels: int | None = None,
                conv_dropout: float = 0.0) -> nn.Sequential:
    """Batch norm and dropout around a hidden dense layer, as in fast.ai's lesson 3 head: `input_dropout` on the
    features (default: half of `dropout`), `dropout` before the output layer. With `conv_channels` the features
    are spatial maps (a backbone cut early) and a conv block with batch norm, then pooling, comes first: the
    layers the lesson retrains when it "throws out more layers"; `conv_dropout` drops whole channels after it."""
    conv = []
    if conv_channels:
        conv = [nn.Conv2d(in_features, conv_channels, 3, padding=1, bias=False), nn.BatchNorm2d(conv_channels),
                nn.ReLU(inplace=True), *([nn.Dropout2d(conv_dropout)] if conv_dropout else []),
                nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        in_features = conv_channels
    return nn.Sequential(
        *conv,
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
        self.frozen: list[nn.Module] = []
        self.fixed_statistics: list[nn.Module] = []

    def sync_batch_norm(self) -> None:
        """Every batch norm layer as a synchronised one (`finetune.sync_bn`), before `freeze` and `fix_statistics`
        list them. timm's converter, since torch's turns timm's BatchNormAct2d into a plain batch norm and drops
        its activation."""
        from timm.layers import convert_sync_batchnorm

        self.backbone, self.head = convert_sync_batchnorm(self.backbone), convert_sync_batchnorm(self.head)

    def freeze(self, modules: list[nn.Module]) -> None:
        """Keep `modules` as they are: no gradients, and eval mode even while the rest trains (batch norm's running
        statistics and dropout would otherwise still change them)."""
        for m in modules:
            m.requires_grad_(False)
        self.frozen = list(modules)
        self.train(self.training)

    def fix_statistics(self) -> None:
        """Keep the backbone's batch norm layers in eval mode while the rest trains: they normalise with the
        running statistics the head's features were computed with, not with each small augmented batch's, which
        would change every feature the head learnt from at the first step. Their scales and shifts still train."""
        self.fixed_statistics = [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen + self.fixed_statistics:
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def save_weights(module: nn.Module, path: Path) -> None:
    """A module's exact weights as safetensors (contiguous CPU copies, as safetensors requires)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, path)


def head_for(feature_shape: tuple[int, ...], num_classes: int, hp) -> nn.Sequential:
    """The head (`head` params `hp`) for features of `feature_shape` per image: (D,) pooled or (C, H, W) spatial."""
    spatial = len(feature_shape) == 3
    return create_head(feature_shape[0], num_classes, hp.hidden, hp.dropout, hp.input_dropout,
                       hp.conv_channels if spatial else None, hp.conv_dropout)


def normalisation(backbone: nn.Module, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone was trained with (timm's data config); for greyscale input, their averages
    over the colour channels (as timm sums the first layer's filters over them)."""
    import timm
    cfg = timm.data.resolve_model_data_config(backbone)
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if channels == 1 and len(mean) != 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean, std
