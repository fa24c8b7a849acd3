"""Stage `head@<comp>-<model>`: precomputed features -> a head per fold, trained on the fold's train rows.

Inputs: `data/<comp>/features/<model>/`, `folds/<comp>.csv`. The head is the lesson's dense layers with batch norm
and dropout, after a conv block when the features are a cut backbone's spatial maps. Outputs in
`models/<comp>/<model>/head/fold<k>/`: `head.safetensors` (after the fixed number of epochs: no epoch is picked on
the validation rows), `oof.csv`, `test.npy`, `params.json`; `metrics/<comp>/<model>/head/fold<k>.json`; learning
curves in `dvclive/<comp>/<model>/head/fold<k>/`. Training on features takes seconds, so the head's
hyperparameters can be tuned without touching the images, and one stage trains every fold's head: a stage per
fold spent more on its start-up (imports, DVC's lock file) than on training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params, as_dict
from pipeline.core.io import atomic_dir, read_json
from pipeline.core.machine import environment
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.data.outputs import fold_outputs, fold_split, fold_summary, save_fold
from pipeline.training.devices import pick_device
from pipeline.training.engine import fit, fold_seed, one_cycle, predict
from pipeline.training.inference import HEAD_BATCH, FeatureRows
from pipeline.training.models import head_for, save_weights


def _loader(data: FeatureRows, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # drop_last: a lone row in the last batch breaks batch norm's statistics
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=shuffle and len(data) > batch_size)


def setup(params: Params, comp_name: str, model: str, fold: int, paths: Paths, pseudo: tuple | None = None):
    """The fold's loaders (train: plain + augmented feature copies, shuffled; val; test), a fresh head and its
    optimizer: everything the head stage trains, which `pipeline lr-find` uses too. `pseudo` adds (features,
    rows, labels) to the training set: pseudo-labelled test rows, never a validation row."""
    comp = get_competition(comp_name)
    mp = params.model(comp_name, model)
    hp = mp.head
    seed = fold_seed(mp.seed, fold)
    torch.manual_seed(seed)
    split = fold_split(paths, comp, fold, params.subsample, params.seed)
    feats = np.load(paths.features / "train.npy", mmap_mode="r")
    train = [(feats, split.train_rows)]
    aug_file = paths.features / "train_aug.npy"
    if aug_file.exists():
        train += [(copy, split.train_rows) for copy in np.load(aug_file, mmap_mode="r")]
    y_train = np.concatenate([split.labels[split.train_rows]] * len(train))
    if pseudo is not None:
        train.append(pseudo[:2])
        y_train = np.concatenate([y_train, pseudo[2]])
    test = np.load(paths.features / "test.npy", mmap_mode="r")
    loaders = (_loader(FeatureRows(train, y_train), hp.batch_size, True, seed),
               _loader(FeatureRows([(feats, split.val_rows)], split.labels[split.val_rows]), HEAD_BATCH, False, 0),
               _loader(FeatureRows([(test, np.arange(len(test)))]), HEAD_BATCH, False, 0))
    head = head_for(feats.shape[1:], comp.num_classes, hp)
    optimizer = torch.optim.AdamW(head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    return split, loaders, head, optimizer


def dropout_schedule(head: torch.nn.Module, hp):
    """`head.dropout_schedule`: each dropout layer's rate for an epoch (1-based); constant, or rising linearly from
    none in the first epoch to the configured rates in the last."""
    layers = [(m, m.p) for m in head.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))]

    def set_rates(epoch: int) -> dict:
        share = 1.0 if hp.dropout_schedule == "constant" or hp.epochs == 1 else (epoch - 1) / (hp.epochs - 1)
        for module, rate in layers:
            module.p = rate * share
        return {"dropout": max((module.p for module, _ in layers), default=0.0)}  # the rate in effect

    return set_rates


def run(params: Params, comp_name: str, model: str, fold: int, root: Path = Path(".")) -> dict:
    comp = get_competition(comp_name)
    mp = params.model(comp_name, model)
    hp = mp.head
    paths = Paths(comp_name, root, model)
    device = pick_device(params.device)
    from dvclive import Live  # here, not at the top: setup() (and lr-find) need none of dvclive's imports

    def train(pseudo=None, live=None):
        split, loaders, head, optimizer = setup(params, comp_name, model, fold, paths, pseudo)
        head = head.to(device)
        scheduler = one_cycle(optimizer, hp.epochs, len(loaders[0]), hp.warmup)
        history = fit(head, loaders[0], loaders[1], split.labels[split.val_rows], optimizer, scheduler, hp.epochs,
                      device, live, before_epoch=dropout_schedule(head, hp))
        return split, loaders, head, history

    pseudo_info = None
    with atomic_dir(paths.fold_model("head", fold)) as out:
        with Live(dir=str(paths.live("head", fold)), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            pseudo = None
            if hp.pseudo_label:
                # A first head labels the test rows it is confident about; a fresh second head trains on the fold's
                # train rows plus those. The validation rows stay out of both, so their predictions stay honest.
                _, loaders, first, first_history = train()
                probs = predict(first, loaders[2], device)
                keep = probs.max(axis=1) >= hp.pseudo_label
                test_feats = np.load(paths.features / "test.npy", mmap_mode="r")
                pseudo = (test_feats, np.flatnonzero(keep), probs[keep].argmax(axis=1))
                pseudo_info = {"threshold": hp.pseudo_label, "test_rows": int(keep.sum()),
                               "of_test_rows": len(keep), "first_history": first_history}
            split, (train_loader, val_loader, test_loader), head, history = train(pseudo, live)
        save_weights(head, out / "head.safetensors")
        oof = predict(head, val_loader, device)
        test = predict(head, test_loader, device)
        info = {"stage": "head", "competition": comp_name, "model": model, "fold": fold, "seed": mp.seed,
                "environment": environment(device),
                "head": as_dict(hp), "features": read_json(paths.features / "meta.json"),
                "history": history, "pseudo_label": pseudo_info}
        return save_fold(out, paths.fold_metrics("head", fold), comp, split, oof, test, info)


def run_folds(params: Params, comp_name: str, model: str, root: Path = Path(".")) -> dict[int, dict]:
    """Every fold's head in turn (params.yaml's `folds`); each fold's outputs as `run` writes them."""
    return {fold: run(params, comp_name, model, fold, root) for fold in params.folds}


def main(argv: list[str] | None = None) -> None:
    wrote = fold_outputs("head")
    stage_main(__doc__, run_folds, per_model=True, argv=argv,
               summary=lambda folds: "".join(f"\n  fold {k}: {fold_summary(m)}" for k, m in folds.items()),
               wrote=lambda comp, model, _: [p.parent for p in wrote(comp, model, 0)])


if __name__ == "__main__":
    main()
