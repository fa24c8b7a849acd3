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

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params, as_dict
from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_dir, read_json
from pipeline.core.machine import environment
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.data.cache import image_rows
from pipeline.data.datasets import ImageDataset, SeededRows, ShardedRows, build_transform
from pipeline.data.outputs import fold_outputs, fold_split, fold_summary, save_fold
from pipeline.reporting.readings import finetune_health
from pipeline.training.checkpoint import Checkpoint, tracked_code
from pipeline.training.devices import Workers, distributed, grad_scaler, loader_workers
from pipeline.training.engine import fit, fold_seed, one_cycle, predict
from pipeline.training.inference import load_start
from pipeline.training.models import save_weights
from pipeline.training.recipe import Recipe


def setup(params: Params, comp_name: str, model: str, fold: int, paths: Paths, device: torch.device,
          workers: Workers | None = None):
    """The fold's loaders (augmented train, val, test), the starting network on `device` and its optimizer
    (lower learning rate for the backbone): everything finetuning trains, which `pipeline lr-find` uses too.
    With several data-parallel `workers`, each process's loaders hold its share of the rows."""
    comp = get_competition(comp_name)
    mp = params.model(comp_name, model)
    ft = mp.finetune
    seed = mp.seed
    workers = workers or Workers(0, 1, device)
    torch.manual_seed(fold_seed(seed, fold))
    split = fold_split(paths, comp, fold, params.subsample, params.seed)
    meta = read_json(paths.features / "meta.json")
    images, test_images = image_rows(paths.cache, "train"), image_rows(paths.cache, "test")
    plain = build_transform(size=meta.get("image_size"))
    augmented = build_transform(ft.augment, meta.get("image_size"))
    # Own generators: a loader otherwise draws its workers' base seed from torch's global RNG (once with
    # persistent workers, per epoch without), which would move dropout's masks with num_workers.
    speed = params.comp(comp_name).speed
    n_workers = loader_workers(speed.finetune_workers, device, workers.world)
    loader = {"num_workers": n_workers, "persistent_workers": n_workers > 0,
              "pin_memory": device.type == "cuda", "generator": torch.Generator().manual_seed(seed)}
    if ft.batch_size % workers.world or ft.batch_size // workers.world < 2:
        raise ConfigError(f"{params.model_key(comp_name, model, 'finetune')}.batch_size: {ft.batch_size} images "
                          f"cannot be shared equally by {workers.world} data-parallel processes with at least 2 "
                          f"each (batch norm needs 2); use a multiple of {workers.world}, at least "
                          f"{2 * workers.world}.")
    rows = SeededRows(len(split.train_rows), (seed, fold), shuffle=True)
    drop_last = len(split.train_rows) > ft.batch_size
    per_step = (ft.batch_size if drop_last else len(split.train_rows)) // workers.world
    if (ft.mixup or ft.cutmix) and per_step % 2:  # timm's Mixup pairs each image with another one of its batch
        raise ConfigError(f"{params.model_key(comp_name, model, 'finetune')}: mixup/cutmix need an even number of "
                          f"images per process and step; fold {fold} gives {per_step} ({len(split.train_rows)} train "
                          f"rows, batch_size {ft.batch_size}, {workers.world} processes): change batch_size.")
    if workers.world > 1:
        rows = ShardedRows(rows, ft.batch_size, workers.rank, workers.world, drop_last)
        if not len(rows):
            raise ConfigError(f"{len(split.train_rows)} train rows in fold {fold} are too few to share among "
                              f"{workers.world} data-parallel processes (each needs 2 per step for batch norm); "
                              "run this fold in one process (launch: python).")
    train_loader = DataLoader(
        ImageDataset(images, split.train_rows, augmented, split.labels[split.train_rows]),
        batch_size=ft.batch_size // workers.world, sampler=rows, drop_last=drop_last and workers.world == 1,
        **loader,
    )

    def share(dataset):  # validation and test rows: each process predicts its share, then all are gathered
        return DistributedSampler(dataset, shuffle=False) if workers.world > 1 else None

    val = ImageDataset(images, split.val_rows, plain, split.labels[split.val_rows])
    test = ImageDataset(test_images, np.arange(len(test_images)), plain)
    val_loader = DataLoader(val, batch_size=ft.batch_size * 2, sampler=share(val), **loader)
    test_loader = DataLoader(test, batch_size=ft.batch_size * 2, sampler=share(test), **loader)
    network = load_start(params, comp_name, model, fold, paths).to(device)
    if workers.world > 1:  # the same start everywhere, then each process its own dropout masks
        torch.manual_seed(int(np.random.SeedSequence([seed, fold, workers.rank]).generate_state(1)[0]))
    if ft.channels_last:  # faster on GPUs and CPUs alike (see benchmarks/RESULTS.md)
        network = network.to(memory_format=torch.channels_last)
    if ft.sync_bn and workers.world > 1:
        if device.type != "cuda":  # torch syncs batch norm statistics on GPUs only
            raise ConfigError(f"{params.model_key(comp_name, model, 'finetune')}.sync_bn: true needs GPUs (torch "
                              f"synchronises batch norm on CUDA only); this run has {workers.world} CPU processes. "
                              "Set it to false, or run on GPUs.")
        network.sync_batch_norm()
    groups, frozen = backbone_groups(network.backbone, ft)
    network.freeze(frozen)
    if ft.batch_norm == "frozen" or (ft.batch_norm == "auto" and mp.features.pretrained):
        network.fix_statistics()
    optimizer = torch.optim.AdamW(groups + [{"params": network.head.parameters(), "lr": ft.lr}],
                                  weight_decay=ft.weight_decay)
    return split, meta, (train_loader, val_loader, test_loader), network, optimizer


def planned_epochs(ft, steps_per_epoch: int, subsample: float = 1.0) -> int:
    """`finetune.epochs`, or more where a fold's epochs are too short to reach `finetune.min_steps`: 3 epochs of a
    Dogs vs Cats-like fold of 112 images are 9 steps, too few to move from the head's start (finetuning then
    lost to its head on 3 of 5 folds; 30 steps beat it on 4). Full-size folds are unaffected. Quick mode's
    `subsample` scales the floor too, so that a share of the images is that share of the steps on small folds
    as it is on full-size ones (else the floor gives back the time the subsample saves)."""
    floor = round(ft.min_steps * subsample)
    return max(ft.epochs, -(-floor // max(1, steps_per_epoch)))


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


def run(params: Params, comp_name: str, model: str, fold: int, root: Path = Path(".")) -> dict | None:
    """Finetune one fold. Started by `torchrun --nproc-per-node N`, N processes train it data-parallel and rank 0
    writes the same files as one process would (the others return None)."""
    with distributed(params.device) as workers:
        return _run(params, comp_name, model, fold, root, workers)


def _run(params: Params, comp_name: str, model: str, fold: int, root: Path, workers: Workers) -> dict | None:
    comp = get_competition(comp_name)
    mp = params.model(comp_name, model)
    ft = mp.finetune
    paths = Paths(comp_name, root, model)
    device = workers.device
    split, meta, (train_loader, val_loader, test_loader), network, optimizer = setup(params, comp_name, model, fold,
                                                                                    paths, device, workers)
    val_labels = split.labels[split.val_rows]
    epochs = planned_epochs(ft, len(train_loader), params.subsample)
    scheduler = one_cycle(optimizer, epochs, len(train_loader), ft.warmup)
    amp = {"amp": ft.amp, "channels_last": ft.channels_last}
    trained = network
    if workers.world > 1:
        # Each process computes its share of the batch; DDP averages the shares' gradients, which is the whole
        # batch's gradient except through batch norm when it trains (batch_norm: train, and the head's): each
        # share is then normalised by its own statistics (batch / N images), not the batch's, unless sync_bn.
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    recipe = Recipe(ft, comp.num_classes, network, (mp.seed, fold))
    evaluated = recipe.evaluated  # the EMA's weights when on
    speed = params.comp(comp_name).speed
    if speed.compile:
        trained, evaluated = torch.compile(trained), torch.compile(evaluated)
    info = {"stage": "finetune", "competition": comp_name, "model": model, "fold": fold, "seed": mp.seed,
            "environment": environment(device),
            "finetune": as_dict(ft), "head": as_dict(mp.head), "features": meta, "compile": speed.compile}
    same_run = {**info,
                "device": str(device.type), "processes": workers.world, "torch": torch.__version__,
                "rows": [split.ids[split.train_rows].tolist(), split.ids[split.val_rows].tolist()]}
    checkpoint = Checkpoint(paths.fold_model("finetune", fold), same_run, workers,
                            {"backbone": paths.features / "backbone.safetensors",
                             "head": paths.fold_model("head", fold) / "head.safetensors",
                             **tracked_code("finetune", comp_name)})  # dvc.yaml's code deps of this stage
    scaler = grad_scaler(device, ft.amp)  # one for the run, kept in the checkpoint with the schedule
    state = {"network": network, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
             "ema": recipe.ema, "rows": train_loader.sampler, "device": device}
    history = checkpoint.resume(state)
    from dvclive import Live  # here, not at the top: setup() (and lr-find) need none of dvclive's imports

    live = (Live(dir=str(paths.live("finetune", fold)), dvcyaml=False, save_dvc_exp=False, report=None)
            if workers.main else contextlib.nullcontext())
    with live:
        history = fit(evaluated, train_loader, val_loader, val_labels, optimizer, scheduler, epochs, device,
                      live if workers.main else None, **amp, history=history, train_model=trained, scaler=scaler,
                      recipe=recipe, after_epoch=lambda epoch, history: checkpoint.save(state, epoch, history))
    oof = predict(evaluated, val_loader, device, ft.tta, **amp)
    test = predict(evaluated, test_loader, device, ft.tta, **amp)
    if not workers.main:
        return None
    with atomic_dir(paths.fold_model("finetune", fold)) as out:
        save_weights(recipe.evaluated, out / "model.safetensors")
        metrics = save_fold(out, paths.fold_metrics("finetune", fold), comp, split, oof, test,
                            {**info, "history": history, "processes": workers.world})
    checkpoint.remove()
    head_history = read_json(paths.fold_model("head", fold) / "params.json")["history"]
    health = finetune_health(head_history, history, mp.features.pretrained, metrics["logloss"])
    return {**metrics, "health": health["reading"], "tta": list(ft.tta)}


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, per_fold=True, argv=argv, wrote=fold_outputs("finetune"),
               summary=lambda metrics: f"{fold_summary(metrics)}{_views(metrics['tta'])}; {metrics['health']}")


def _views(tta: list[str]) -> str:
    """Why the stage's score differs from its last epoch's line: the kept predictions average the TTA views."""
    return f", averaged over {len(tta)} test-time views ({', '.join(tta)})" if len(tta) > 1 else ""


if __name__ == "__main__":
    main()
