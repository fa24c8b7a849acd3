"""The report's look inside the model (the first of `models`, fold 0, finetuned): its layers with parameter counts
(the course's `model.summary()`), the first conv layer's filters, Grad-CAM maps and each feature level's
activations on a few validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.competitions import Competition
from pipeline.core.config import Params
from pipeline.core.paths import Paths
from pipeline.data.datasets import build_transform
from pipeline.reporting.figures import pyplot, show
from pipeline.reporting.figures import save_report_png as _save


def model_parts(params: Params, comp_name: str, paths: Paths):
    """Fold 0's finetuned network (backbone + head) of `paths.model`, as finetuning left it."""
    import torch
    from safetensors.torch import load_file

    from pipeline.training.inference import load_start

    fold = params.folds[0]
    model = load_start(params, comp_name, paths.model, fold, paths)
    model.load_state_dict(load_file(paths.fold_model("finetune", fold) / "model.safetensors"))
    torch.set_grad_enabled(True)
    return model.eval(), fold


def layer_table(model) -> pd.DataFrame:
    rows = []
    for part_name, part in (("backbone", model.backbone.model), ("head", model.head)):
        for name, child in part.named_children():
            n = sum(p.numel() for p in child.parameters())
            rows.append({"part": part_name, "layer": name, "type": type(child).__name__, "parameters": n})
    table = pd.DataFrame(rows)
    total = sum(p.numel() for p in model.parameters())  # also parameters held outside any child (ViT tokens)
    return pd.concat([table, pd.DataFrame([{"part": "total", "layer": "", "type": "", "parameters": total}])],
                     ignore_index=True)


def filters_figure(model, out: Path) -> Path | None:
    import torch

    plt = pyplot()
    conv = next((m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return None  # no convolution to show (e.g. a transformer without a conv stem)
    w = conv.weight.detach().float().cpu().numpy()  # (out, in, k, k)
    w = w[:, :3] if w.shape[1] >= 3 else np.repeat(w[:, :1], 3, axis=1)
    n = min(len(w), 32)
    cols = 8
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(cols * 0.9, -(-n // cols) * 0.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, f in zip(axes.flat, w[:n]):
        f = f.transpose(1, 2, 0)
        ax.imshow((f - f.min()) / (np.ptp(f) + 1e-8), interpolation="nearest")
    fig.suptitle(f"first conv layer: {n} of {len(w)} filters ({w.shape[2]}x{w.shape[3]})", fontsize=9)
    return _save(fig, out)


def gradcam_figure(model, images: np.ndarray, rows: np.ndarray, comp: Competition, meta: dict,
                   out: Path) -> Path | None:
    """Grad-CAM (Selvaraju et al.) on the backbone's last feature map, for the predicted class: where the network
    looked."""
    import torch

    plt = pyplot()
    x = _batch(images, rows, meta)
    trunk = model.backbone
    if trunk.cut >= 0:  # a cut backbone's output is its last map; the head's conv block follows
        fmap = trunk(x)
        head = model.head
    else:
        fmap = trunk.model.forward_features(trunk.normalise(x))
        def head(f):
            return model.head(trunk.model.forward_head(f))
    if fmap.ndim != 4 or fmap.shape[1] != trunk.num_features:
        return None  # Grad-CAM needs a channels-first spatial map (a ViT gives tokens)
    fmap.retain_grad()
    logits = head(fmap)
    pred = logits.argmax(dim=1)
    logits.gather(1, pred[:, None]).sum().backward()
    cams = torch.relu((fmap.grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(dim=1, keepdim=True))
    cams = torch.nn.functional.interpolate(cams, size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    cams = (cams / cams.flatten(1).max(dim=1).values.clamp_min(1e-8)[:, None, None]).detach().numpy()
    fig, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 2.8), squeeze=False)
    for ax, r, cam, p in zip(axes[0], rows, cams, pred.tolist()):
        show(ax, images[r])
        ax.imshow(cam, cmap="jet", alpha=0.4)
        ax.set_title(f"predicted {comp.classes[p]}", fontsize=8)
        ax.axis("off")
    fig.suptitle("Grad-CAM on the last feature map (red: what drove the prediction)", fontsize=9)
    return _save(fig, out)


def _batch(images: np.ndarray, rows: np.ndarray, meta: dict):
    import torch

    transform = build_transform(size=meta.get("image_size"))
    return torch.stack([transform(image=np.array(images[r]))["image"] for r in rows])  # a copy: the cache is read-only


def activations_figure(model, images: np.ndarray, rows: np.ndarray, meta: dict, out: Path) -> Path | None:
    """Each feature level's activation (mean over channels) for a few images, shallow to deep: early levels
    respond to edges and colours at full detail, deep ones to parts and objects at coarse resolution (Zeiler and
    Fergus, "Visualizing and Understanding Convolutional Networks")."""
    import torch

    plt = pyplot()
    try:
        with torch.no_grad():
            levels = model.backbone.levels(_batch(images, rows, meta))
    except (NotImplementedError, AttributeError, TypeError):
        return None  # a timm model without forward_intermediates
    levels = [a for a in levels if a.ndim == 4]
    if not levels:
        return None
    fig, axes = plt.subplots(len(rows), len(levels) + 1, figsize=(1.9 * (len(levels) + 1), 1.9 * len(rows)),
                             squeeze=False)
    for i, r in enumerate(rows):
        show(axes[i, 0], images[r])
        for j, a in enumerate(levels, start=1):
            axes[i, j].imshow(a[i].float().abs().mean(dim=0).numpy(), cmap="viridis")
            if i == 0:
                axes[i, j].set_title(f"level {j - 1}: {a.shape[1]}x{a.shape[2]}x{a.shape[3]}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("activations by feature level, shallow to deep (mean |activation| over channels)", fontsize=9)
    return _save(fig, out)
