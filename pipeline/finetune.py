"""Stage `finetune@<comp>-<model>-<fold>`: (cut) backbone + trained head, finetuned end to end on augmented images.

Starts from exactly the network the head was trained on (`data/<comp>/features/<model>/backbone.safetensors` and
`models/<comp>/<model>/head/fold<k>/head.safetensors`), never from a random head; epoch 0 of the learning curve is
that starting point, so its validation log loss matches the head's. Augmentation comes from
`<comp>.finetune.augment` (params.yaml refuses horizontal flips for State Farm); the learning rate warms up, peaks and anneals, and the
last epoch is kept (none is picked on the validation rows, so their predictions stay out-of-fold).
Outputs in `models/<comp>/<model>/finetune/fold<k>/`: `model.safetensors`, `oof.csv` and `test.npy` (averaged
over `finetune.tta` views), `params.json`; `metrics/<comp>/<model>/finetune/fold<k>.json`; curves in
`dvclive/<comp>/<model>/finetune/fold<k>/`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from pipeline.competitions import get_competition
from pipeline.config import Params, as_dict
from pipeline.cache import load_cache
from pipeline.data import ImageDataset, SeededRows, build_transform
from pipeline.engine import fit, fold_seed, one_cycle, pick_device, predict
from pipeline.io import atomic_dir, read_json
from pipeline.models import Classifier, create_trunk, head_for, save_weights
from pipeline.outputs import fold_outputs, fold_summary, fold_split, save_fold
from pipeline.paths import Paths
from pipeline.stage import stage_main


def load_start(params: Params, comp_name: str, model: str, fold: int, paths: Paths) -> Classifier:
    """The features stage's (cut) backbone joined to the fold's trained head (or, with `finetune.init: random`, to
    a freshly initialised one, seeded by fold)."""
    mp = params.model(comp_name, model)
    comp = get_competition(comp_name)
    # weights come from the features stage's file, not the hub
    backbone = create_trunk(mp.features, pretrained=False, key=params.model_key(comp_name, model, "features"))
    backbone.load_state_dict(load_file(paths.features / "backbone.safetensors"))
    head = head_for(tuple(read_json(paths.features / "meta.json")["shape"]), comp.num_classes, mp.head)
    if mp.finetune.init == "head":
        head.load_state_dict(load_file(paths.fold_model("head", fold) / "head.safetensors"))
    return Classifier(backbone, head)


def setup(params: Params, comp_name: str, model: str, fold: int, paths: Paths, device: torch.device):
    """The fold's loaders (augmented train, val, test), the starting network on `device` and its optimizer
    (lower learning rate for the backbone): everything finetuning trains, which `pipeline lr-find` uses too."""
    comp = get_competition(comp_name)
    mp = params.model(comp_name, model)
    ft = mp.finetune
    seed = mp.seed
    torch.manual_seed(fold_seed(seed, fold))
    split = fold_split(paths, comp, fold)
    meta = read_json(paths.features / "meta.json")
    images, _ = load_cache(paths.cache, "train")
    test_images, _ = load_cache(paths.cache, "test")
    plain = build_transform(meta["mean"], meta["std"], size=meta.get("image_size"))
    augmented = build_transform(meta["mean"], meta["std"], ft.augment, meta.get("image_size"))
    # Own generators: a loader otherwise draws its workers' base seed from torch's global RNG (once with
    # persistent workers, per epoch without), which would move dropout's masks with num_workers.
    loader = {"num_workers": ft.num_workers, "persistent_workers": ft.num_workers > 0,
              "generator": torch.Generator().manual_seed(seed)}
    train_loader = DataLoader(
        ImageDataset(images, split.train_rows, augmented, split.labels[split.train_rows]),
        batch_size=ft.batch_size, sampler=SeededRows(len(split.train_rows), (seed, fold), shuffle=True),
        drop_last=len(split.train_rows) > ft.batch_size, **loader,
    )
    val_loader = DataLoader(ImageDataset(images, split.val_rows, plain, split.labels[split.val_rows]),
                            batch_size=ft.batch_size * 2, **loader)
    test_loader = DataLoader(ImageDataset(test_images, np.arange(len(test_images)), plain),
                             batch_size=ft.batch_size * 2, **loader)
    network = load_start(params, comp_name, model, fold, paths).to(device)
    if ft.channels_last and device.type == "cuda":
        network = network.to(memory_format=torch.channels_last)
    groups, frozen = backbone_groups(network.backbone, ft)
    network.freeze(frozen)
    optimizer = torch.optim.AdamW(groups + [{"params": network.head.parameters(), "lr": ft.lr}],
                                  weight_decay=ft.weight_decay)
    return split, meta, (train_loader, val_loader, test_loader), network, optimizer


def backbone_groups(trunk, ft) -> tuple[list[dict], list[torch.nn.Module]]:
    """The backbone's optimizer groups, by timm's coarse layer groups (stem, each stage, the last convs): the last
    `finetune.unfreeze` groups train (-1: all), the last at `lr * backbone_lr_ratio` and each earlier one at
    `layer_decay` times the next one's rate (fast.ai's differential learning rates). Also the modules of the
    other groups, to freeze."""
    from timm.models import group_parameters

    model = trunk.model
    named = dict(model.named_parameters())
    if hasattr(model, "group_matcher"):
        layers = [names for _, names in sorted(group_parameters(model, model.group_matcher(coarse=True)).items())]
    else:  # a model timm cannot group: one group
        layers = [list(named)]
    keep = len(layers) if ft.unfreeze < 0 else min(ft.unfreeze, len(layers))
    groups, frozen = [], []
    for depth, names in enumerate(reversed(layers)):  # depth 0: the last group
        if depth >= keep:
            for n in names:
                named[n].requires_grad_(False)
            # the modules owning them go to eval mode (batch norm); a parameter of the model itself (a ViT's
            # position embedding) has no module of its own to freeze
            frozen += [model.get_submodule(n.rpartition(".")[0]) for n in names if "." in n]
            continue
        groups.append({"params": [named[n] for n in names],
                       "lr": ft.lr * ft.backbone_lr_ratio * ft.layer_decay ** depth})
    return groups, list({id(m): m for m in frozen}.values())


def run(params: Params, comp_name: str, model: str, fold: int, root: Path = Path(".")) -> dict:
    comp = get_competition(comp_name)
    mp = params.model(comp_name, model)
    ft = mp.finetune
    paths = Paths(comp_name, root, model)
    device = pick_device(params.device)
    split, meta, (train_loader, val_loader, test_loader), network, optimizer = setup(params, comp_name, model, fold,
                                                                                    paths, device)
    val_labels = split.labels[split.val_rows]
    scheduler = one_cycle(optimizer, ft.epochs, len(train_loader), ft.warmup)
    amp = {"amp": ft.amp, "channels_last": ft.channels_last}
    from dvclive import Live  # here, not at the top: setup() (and lr-find) need none of dvclive's imports

    with atomic_dir(paths.fold_model("finetune", fold)) as out:
        with Live(dir=str(paths.live("finetune", fold)), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            history = fit(network, train_loader, val_loader, val_labels, optimizer, scheduler, ft.epochs, device,
                          live, **amp)
        save_weights(network, out / "model.safetensors")
        oof = predict(network, val_loader, device, ft.tta, **amp)
        test = predict(network, test_loader, device, ft.tta, **amp)
        info = {"stage": "finetune", "competition": comp_name, "model": model, "fold": fold, "seed": mp.seed,
                "finetune": as_dict(ft), "head": as_dict(mp.head),
                "features": meta, "history": history}
        return save_fold(out, paths.fold_metrics("finetune", fold), comp, split, oof, test, info)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, per_fold=True, argv=argv, summary=fold_summary, wrote=fold_outputs("finetune"))


if __name__ == "__main__":
    main()
