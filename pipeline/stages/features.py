"""Stage `features@<comp>-<model>`: `data/<comp>/cache/` -> `data/<comp>/features/<model>/`, conv features
precomputed once.

A frozen timm backbone (eval mode) turns every cached image into features, stored as float16: with
`features.cut: -1` the whole backbone's pooled vector (D,); with a feature level `cut` >= 0, that level's spatial
map (C, H, W), the later layers dropped (the lesson's "throw out more layers": the head then retrains a conv
block). Files: `train.npy` (N, ...), `test.npy` (M, ...) and, when `features.aug_copies` > 0, `train_aug.npy`
(copies, N, ...) of augmented train images (the course's trick to use augmentation with precomputed features).
The cut backbone's exact weights go to `backbone.safetensors`, so finetuning starts from the very network the
head was trained on. Rows are in the cache's order: never shuffled, so labels stay aligned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.core.config import Params, as_dict
from pipeline.core.io import NpyRows, atomic_dir, read_json, write_json
from pipeline.core.machine import environment
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.data.cache import image_rows
from pipeline.data.datasets import ImageDataset, build_transform
from pipeline.training.devices import pick_device
from pipeline.training.inference import extract
from pipeline.training.models import create_trunk, normalisation, save_weights


def feature_shape(backbone, image_size: tuple[int, int], channels: int, device) -> tuple[int, ...]:
    """The shape of one image's features: (D,) pooled, or a cut backbone's (C, H, W) at this image size."""
    with torch.no_grad():
        return tuple(backbone(torch.zeros(1, channels, *image_size, device=device)).shape[1:])


def run(params: Params, comp_name: str, model: str, root: Path = Path(".")) -> Path:
    mp = params.model(comp_name, model)
    fp, speed = mp.features, params.comp(comp_name).speed
    paths = Paths(comp_name, root, model)
    device = pick_device(params.device)
    torch.manual_seed(mp.seed)
    caches = {split: image_rows(paths.cache, split) for split in ("test", "train")}
    size = tuple(fp.image_size or caches["train"].shape[1:3])
    key = params.model_key(comp_name, model, "features")
    channels = caches["train"].shape[3]  # 1 for greyscale images
    backbone = create_trunk(fp, key=key, image_size=size, in_chans=channels).to(device).eval()
    if fp.channels_last:  # faster on GPUs and CPUs alike (see benchmarks/RESULTS.md)
        backbone = backbone.to(memory_format=torch.channels_last)
    mean, std = normalisation(backbone, channels)
    resize = size if fp.image_size else None
    plain = build_transform(size=resize)
    with atomic_dir(paths.features) as out:
        shape = feature_shape(backbone, size, channels, device)
        for split, images in caches.items():
            rows = NpyRows(out / f"{split}.npy", np.float16, (len(images), *shape))
            extract(backbone, ImageDataset(images, np.arange(len(images)), plain), rows, fp, speed,
                    device, f"{comp_name} {split}")
        images = caches["train"]
        if fp.aug_copies:
            aug = NpyRows(out / "train_aug.npy", np.float16, (fp.aug_copies, len(images), *shape), row_shape=shape)
            augmented = ImageDataset(images, np.arange(len(images)), build_transform(fp.augment, resize))
            for k in range(fp.aug_copies):  # each copy its own seeds: copies differ from each other
                extract(backbone, augmented, aug, fp, speed, device, f"{comp_name} augmented {k + 1}",
                        seed=(mp.seed, k), first=k * len(images))
        save_weights(backbone, out / "backbone.safetensors")
        write_json(
            out / "meta.json",
            {"num_features": shape[0], "shape": list(shape), "mean": mean, "std": std, "seed": mp.seed,
             "image_size": list(resize) if resize else None,
             "model": model, "features": as_dict(fp), "environment": environment(device)},
        )
    return paths.features


def summary(out: Path) -> str:
    meta = read_json(out / "meta.json")
    rows = {split: len(np.load(out / f"{split}.npy", mmap_mode="r")) for split in ("train", "test")}
    copies = meta["features"]["aug_copies"]
    cut = meta["features"]["cut"]
    where = "" if cut < 0 else f" cut at level {cut}"
    shape = "x".join(map(str, meta["shape"]))
    return (f"{shape} features from {meta['features']['backbone']}{where} for {rows['train']} train "
            f"(+{copies} augmented copies) and {rows['test']} test images")


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, per_model=True, argv=argv, summary=summary,
               wrote=lambda comp, model, fold: [Paths(comp, model=model).features])


if __name__ == "__main__":
    main()
