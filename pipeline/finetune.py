"""Stage `finetune@<comp>-<fold>`: backbone + trained head, finetuned end to end on augmented images.

Starts from exactly the network the head was trained on (`data/<comp>/features/backbone.safetensors` and
`models/<comp>/head/fold<k>/head.safetensors`), never from a random head; epoch 0 of the learning curve is that
starting point, so its validation log loss matches the head's. Augmentation comes from `<comp>.augment`
(params.yaml refuses horizontal flips for State Farm); the learning rate warms up, peaks and anneals; the epoch
with the best validation log loss is kept. Outputs in `models/<comp>/finetune/fold<k>/`: `model.safetensors`,
`oof.csv` and `test.npy` (averaged over `finetune.tta` views), `params.json`; `metrics/<comp>/finetune/fold<k>.json`;
curves in `dvclive/<comp>/finetune/fold<k>/`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from pipeline.competitions import get_competition
from pipeline.config import Params, as_dict
from pipeline.data import ImageDataset, build_transform, load_cache
from pipeline.engine import fit, one_cycle, pick_device, predict
from pipeline.io import atomic_dir, read_json
from pipeline.models import Classifier, create_backbone, create_head, save_weights
from pipeline.outputs import fold_split, save_fold
from pipeline.paths import Paths
from pipeline.stage import stage_main


def load_start(params: Params, comp_name: str, fold: int, paths: Paths) -> Classifier:
    """The features stage's backbone joined to the fold's trained head."""
    cp = params.comp(comp_name)
    comp = get_competition(comp_name)
    # weights come from the features stage's file, not the hub
    backbone = create_backbone(cp.features, pretrained=False, key=f"{comp_name}.features")
    backbone.load_state_dict(load_file(paths.features / "backbone.safetensors"))
    head = create_head(backbone.num_features, comp.num_classes, cp.head.hidden, cp.head.dropout)
    head.load_state_dict(load_file(paths.model("head", fold) / "head.safetensors"))
    return Classifier(backbone, head)


def run(params: Params, comp_name: str, fold: int, root: Path = Path(".")) -> dict:
    comp = get_competition(comp_name)
    cp = params.comp(comp_name)
    ft = cp.finetune
    paths = Paths(comp_name, root)
    device = pick_device(params.device)
    torch.manual_seed(params.seed + fold)
    split = fold_split(paths, comp, fold)
    meta = read_json(paths.features / "meta.json")
    images, _ = load_cache(paths.cache, "train")
    test_images, _ = load_cache(paths.cache, "test")
    plain = build_transform(meta["mean"], meta["std"])
    augmented = build_transform(meta["mean"], meta["std"], cp.augment, seed=params.seed + fold)
    val_labels = split.labels[split.val_rows]
    workers = {"num_workers": ft.num_workers, "persistent_workers": ft.num_workers > 0}
    train_loader = DataLoader(
        ImageDataset(images, split.train_rows, augmented, split.labels[split.train_rows]),
        batch_size=ft.batch_size, shuffle=True, drop_last=len(split.train_rows) > ft.batch_size,
        generator=torch.Generator().manual_seed(params.seed + fold), **workers,
    )
    val_loader = DataLoader(ImageDataset(images, split.val_rows, plain, val_labels), batch_size=ft.batch_size * 2)
    test_loader = DataLoader(ImageDataset(test_images, np.arange(len(test_images)), plain), batch_size=ft.batch_size * 2)

    model = load_start(params, comp_name, fold, paths).to(device)
    if ft.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        [{"params": model.backbone.parameters(), "lr": ft.lr * ft.backbone_lr_ratio},
         {"params": model.head.parameters(), "lr": ft.lr}],
        weight_decay=ft.weight_decay,
    )
    scheduler = one_cycle(optimizer, ft.epochs, len(train_loader), ft.warmup)
    amp = {"amp": ft.amp, "channels_last": ft.channels_last}
    with atomic_dir(paths.model("finetune", fold)) as out:
        with Live(dir=str(paths.live("finetune", fold)), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            best_epoch, history = fit(model, train_loader, val_loader, val_labels, optimizer, scheduler,
                                      ft.epochs, device, live, **amp)
        save_weights(model, out / "model.safetensors")
        oof = predict(model, val_loader, device, ft.tta, **amp)
        test = predict(model, test_loader, device, ft.tta, **amp)
        info = {"stage": "finetune", "competition": comp_name, "fold": fold, "seed": params.seed,
                "finetune": as_dict(ft), "augment": as_dict(cp.augment), "head": as_dict(cp.head),
                "features": meta, "best_epoch": best_epoch, "history": history}
        return save_fold(out, paths.fold_metrics("finetune", fold), comp, split, oof, test, info)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, per_fold=True, argv=argv)


if __name__ == "__main__":
    main()
