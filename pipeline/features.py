"""Stage `features@<comp>`: `data/<comp>/cache/` -> `data/<comp>/features/`, conv features precomputed once.

A frozen timm backbone (eval mode, pooled output) turns every cached image into a feature vector, stored as
float16: `train.npy` (N, D), `test.npy` (M, D) and, when `features.aug_copies` > 0, `train_aug.npy` (copies, N, D)
of augmented train images (the course's trick to use augmentation with precomputed features). The backbone's
exact weights go to `backbone.safetensors`, so finetuning starts from the very network the head was trained on.
Rows are in the cache's order: never shuffled, so labels stay aligned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.config import Params, as_dict
from pipeline.data import ImageDataset, SeededRows, build_transform, load_cache
from pipeline.engine import autocast, pick_device
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.models import create_backbone, normalisation, save_weights
from pipeline.paths import Paths
from pipeline.stage import stage_main


@torch.no_grad()
def extract(backbone, dataset, out: np.ndarray, batch_size: int, device, amp: bool, desc: str, seed=None) -> None:
    """Write the backbone's pooled features of every `dataset` row into `out`, in order (augmented with `seed`)."""
    sampler = None if seed is None else SeededRows(len(dataset), seed, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    start = 0
    for x in tqdm(loader, desc=desc, unit="batch"):
        with autocast(device, amp):
            f = backbone(x.to(device, non_blocking=True))
        out[start : start + len(f)] = f.float().cpu().numpy().astype(np.float16)
        start += len(f)


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    cp = params.comp(comp_name)
    fp = cp.features
    paths = Paths(comp_name, root)
    device = pick_device(params.device)
    torch.manual_seed(params.seed)
    caches = {split: load_cache(paths.cache, split)[0] for split in ("test", "train")}
    size = caches["train"].shape[1:3]
    backbone = create_backbone(fp, key=f"{comp_name}.features", image_size=size).to(device).eval()
    mean, std = normalisation(backbone)
    plain = build_transform(mean, std)
    with atomic_dir(paths.features) as out:
        dim = backbone.num_features
        for split, images in caches.items():
            arr = np.lib.format.open_memmap(out / f"{split}.npy", "w+", np.float16, (len(images), dim))
            dataset = ImageDataset(images, np.arange(len(images)), plain)
            extract(backbone, dataset, arr, fp.batch_size, device, fp.amp, f"{comp_name} {split}")
            arr.flush()
        images = caches["train"]
        if fp.aug_copies:
            shape = (fp.aug_copies, len(images), dim)
            aug = np.lib.format.open_memmap(out / "train_aug.npy", "w+", np.float16, shape)
            augmented = ImageDataset(images, np.arange(len(images)), build_transform(mean, std, cp.augment))
            for k in range(fp.aug_copies):  # each copy its own seeds: copies differ from each other
                extract(backbone, augmented, aug[k], fp.batch_size, device, fp.amp, f"{comp_name} augmented {k + 1}",
                        seed=(params.seed, k))
            aug.flush()
        save_weights(backbone, out / "backbone.safetensors")
        write_json(
            out / "meta.json",
            {"num_features": dim, "mean": mean, "std": std, "seed": params.seed,
             "features": as_dict(fp), "augment": as_dict(cp.augment) if fp.aug_copies else None},
        )
    return paths.features


def summary(out: Path) -> str:
    meta = read_json(out / "meta.json")
    rows = {split: len(np.load(out / f"{split}.npy", mmap_mode="r")) for split in ("train", "test")}
    copies = meta["features"]["aug_copies"]
    return (f"{meta['num_features']} features from {meta['features']['backbone']} for {rows['train']} train "
            f"(+{copies} augmented copies) and {rows['test']} test images")


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=summary, wrote=lambda comp, fold: [Paths(comp).features])


if __name__ == "__main__":
    main()
