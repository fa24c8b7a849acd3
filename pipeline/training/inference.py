"""A trained member's predictions from decoded images: its backbone's features and its heads, or its finetuned
networks with test-time views. The stages that train them (features, head, finetune) and a code competition's
notebook (`pipeline.kernel.predict`) call these, so Kaggle's re-run computes what `dvc repro` computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params
from pipeline.core.io import read_json
from pipeline.core.paths import Paths
from pipeline.data.datasets import SeededRows
from pipeline.training.devices import autocast, loader_workers, to_device
from pipeline.training.models import Classifier, Trunk, create_trunk, head_for

HEAD_BATCH = 1024
"""Feature rows per batch when a head predicts (its layers are small: the batch only sets the pace)."""


class FeatureRows(Dataset):
    """Chosen rows of (memory-mapped, float16) feature arrays, cast to float32 a row at a time, with their labels:
    a cut backbone's spatial maps of 100k images are never in memory whole. `parts`: (array, rows) pairs, read in
    that order."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray | None = None):
        self.parts, self.labels = parts, labels
        self.starts = np.cumsum([0] + [len(rows) for _, rows in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        array, rows = self.parts[k]
        x = torch.from_numpy(np.asarray(array[rows[i - self.starts[k]]], dtype=np.float32))
        return x if self.labels is None else (x, int(self.labels[i]))


class ArrayRows:
    """An in-memory array written a block of rows at a time, as `NpyRows` writes a file (cast to its dtype)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def write(self, start: int, block: np.ndarray) -> None:
        self.array[start : start + len(block)] = block


@torch.no_grad()
def extract(backbone, dataset, out, fp, speed, device, desc: str, seed=None, first: int = 0) -> None:
    """Write the backbone's features of every `dataset` row into `out`'s rows `first`..., in order, a batch at a
    time (augmented with `seed`).

    `speed.features_workers` processes read, resize and augment the uint8 images while the backbone runs (each
    image's augmentation is seeded by `SeededRows`, so the features do not depend on the number of workers);
    batches travel as uint8 through pinned memory and are normalised on the device."""
    sampler = None if seed is None else SeededRows(len(dataset), seed, shuffle=False)
    workers = loader_workers(speed.features_workers, device)
    loader = DataLoader(dataset, batch_size=speed.features_batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    start = first
    for x in tqdm(loader, desc=desc, unit="batch", disable=None):
        with autocast(device, fp.amp):
            f = backbone(to_device(x, device, fp.channels_last))
        out.write(start, f.float().cpu().numpy())
        start += len(f)


def load_trunk(fp, weights: Path, channels: int, key: str = "features") -> Trunk:
    """The features stage's (cut) backbone with its exact weights from `weights` (no download)."""
    trunk = create_trunk(fp, pretrained=False, key=key, in_chans=channels)
    trunk.load_state_dict(load_file(weights))
    return trunk


def load_head(feature_shape, num_classes: int, hp, weights: Path | None = None) -> torch.nn.Sequential:
    """A head for features of `feature_shape`, with the trained weights in `weights` (fresh ones without)."""
    head = head_for(tuple(feature_shape), num_classes, hp)
    if weights is not None:
        head.load_state_dict(load_file(weights))
    return head


def load_network(mp, feature_shape, channels: int, num_classes: int, weights: Path) -> Classifier:
    """A fold's finetuned network (backbone and head) from its `model.safetensors`."""
    network = Classifier(create_trunk(mp.features, pretrained=False, in_chans=channels),
                         head_for(tuple(feature_shape), num_classes, mp.head))
    network.load_state_dict(load_file(weights))
    return network


def load_start(params: Params, comp_name: str, model: str, fold: int, paths: Paths) -> Classifier:
    """Where a fold's finetuning starts: the features stage's (cut) backbone joined to the fold's trained head (or,
    with `finetune.init: random`, to a freshly initialised one, seeded by fold). The finetune stage, the report,
    `pipeline lr-find` and `pipeline overfit` build it here."""
    mp = params.model(comp_name, model)
    comp = get_competition(comp_name)
    # weights come from the features stage's file, not the hub
    backbone = load_trunk(mp.features, paths.features / "backbone.safetensors", comp.channels,
                          params.model_key(comp_name, model, "features"))
    trained = paths.fold_model("head", fold) / "head.safetensors" if mp.finetune.init == "head" else None
    head = load_head(read_json(paths.features / "meta.json")["shape"], comp.num_classes, mp.head, trained)
    return Classifier(backbone, head)
