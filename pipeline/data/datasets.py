"""Datasets over the decoded image cache, albumentations transforms, and test-time views."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from pipeline.core.sections import AugmentParams

if TYPE_CHECKING:
    import albumentations as A


def build_transform(aug: AugmentParams | None = None, size=None) -> A.Compose:
    """uint8 HWC image -> uint8 CHW tensor, resized to `size` (height, width) when given (a model's
    `features.image_size`; augmentation then works at that size), with `aug`'s random changes when given. Batches
    stay uint8 until the device: `models.Trunk` normalises them there."""
    import albumentations as A  # here: a stage that only reads the cache need not import it (and cv2)
    import cv2
    from albumentations.pytorch import ToTensorV2

    # No OpenCV thread pool: DataLoader workers are forks of this process, and a fork of a process whose OpenCV
    # threads hold a lock waits on it forever (seen: a worker hung in OpenCV). Workers are the parallelism.
    cv2.setNumThreads(0)

    ops = [A.Resize(*size, interpolation=cv2.INTER_AREA)] if size else []
    if aug is not None:
        if aug.hflip > 0:
            ops.append(A.HorizontalFlip(p=aug.hflip))
        if aug.shift or aug.scale or aug.rotate:
            ops.append(
                A.Affine(
                    scale=(1 - aug.scale, 1 + aug.scale),
                    translate_percent=(-aug.shift, aug.shift),
                    rotate=(-aug.rotate, aug.rotate),
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=0.9,
                )
            )
        if aug.brightness_contrast > 0:
            bc = aug.brightness_contrast
            ops.append(A.RandomBrightnessContrast(brightness_limit=bc, contrast_limit=bc, p=0.75))
        if aug.channel_shuffle > 0:
            ops.append(A.ChannelShuffle(p=aug.channel_shuffle))
        if aug.rgb_shift > 0:
            limit = aug.rgb_shift * 255  # uint8 images: the limits are in pixel values
            ops.append(A.RGBShift(r_shift_limit=limit, g_shift_limit=limit, b_shift_limit=limit, p=1.0))
        if aug.policy == "trivial":
            ops.append(trivial_policy())
    ops.append(ToTensorV2())
    return A.Compose(ops, seed=0)  # reseeded per sample by SeededRows


def trivial_policy() -> A.OneOf:
    """TrivialAugment (Muller & Hutter 2021) with albumentations: one op per image, drawn uniformly from a fixed
    list, at a strength drawn uniformly up to the paper's maximum (its RandAugment space). No flip: the
    competition's record decides those (`hflip`). The colour op leaves a greyscale (1-channel) image as it is, and
    every op keeps the image's channels."""
    import albumentations as A
    import cv2

    reflect = {"border_mode": cv2.BORDER_REFLECT_101, "p": 1.0}
    ops = [
        A.NoOp(p=1.0),
        A.Affine(shear={"x": (-17, 17), "y": (0, 0)}, **reflect),  # 0.3 of the side, as the paper's shear
        A.Affine(shear={"x": (0, 0), "y": (-17, 17)}, **reflect),
        A.Affine(translate_percent={"x": (-0.15, 0.15), "y": (0, 0)}, **reflect),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.15, 0.15)}, **reflect),
        A.Affine(rotate=(-30, 30), **reflect),
        A.RandomBrightnessContrast(brightness_limit=0.9, contrast_limit=0.0, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.9, p=1.0),
        A.ColorJitter(brightness=0.0, contrast=0.0, saturation=(0.1, 1.9), hue=0.0, p=1.0),
        A.Sharpen(alpha=(0.0, 0.9), lightness=(1.0, 1.0), p=1.0),
        A.Posterize(num_bits=(4, 8), p=1.0),
        A.Solarize(threshold_range=(0.0, 1.0), p=1.0),
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
    ]
    return A.OneOf(ops, p=1.0)


class SeededRows(Sampler):
    """Row positions, each with the seed of its augmentation, as (position, seed) pairs.

    albumentations keeps its random state inside `Compose`, and every DataLoader worker gets a copy of it, so
    workers would draw the same augmentations. Drawing a seed per sample here, in the main process, makes each
    image's augmentation depend only on `seed`, the epoch and the draw: never on `num_workers`.
    """

    def __init__(self, n: int, seed, shuffle: bool):
        self.n, self.seed, self.shuffle, self.epoch = n, tuple(np.atleast_1d(seed).tolist()), shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng([*self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        return iter(zip(order.tolist(), rng.integers(0, 2**31, self.n).tolist()))


class ShardedRows(Sampler):
    """This process's share of every batch of `rows` (a `SeededRows`) when `world` data-parallel processes train
    together: the global batch of `batch_size` is split into `world` shares, rank r taking every world-th pair.
    So each optimiser step sees the same images with the same augmentation seeds as one process with the whole
    batch (what `DistributedSampler` cannot promise: it shuffles by its own seed), and the averaged gradient is
    the whole batch's. Every process takes the same number of steps."""

    def __init__(self, rows: SeededRows, batch_size: int, rank: int, world: int, drop_last: bool):
        self.rows, self.batch_size, self.rank, self.world, self.drop_last = rows, batch_size, rank, world, drop_last
        self.n = sum(len(b[rank::world]) for b in self._batches(list(range(len(rows)))))

    def _batches(self, pairs: list):
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            if len(batch) < self.batch_size and (self.drop_last or len(batch) < 2 * self.world):
                return  # a last batch too small to give every process 2 rows (batch norm needs 2) is dropped
            yield batch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for batch in self._batches(list(self.rows)):
            yield from batch[self.rank :: self.world]


def reseed(transform: A.Compose, seed: int) -> None:
    """Give `transform` and each of its steps a distinct random stream derived from `seed`."""
    transform.set_random_seed(seed)
    for step, s in zip(transform.transforms, np.random.default_rng(seed).integers(0, 2**31, len(transform.transforms))):
        step.set_random_seed(int(s))


class ImageDataset(Dataset):
    """Rows `rows` of a cached image array, transformed; with labels when given.

    Indexed by position, or by (position, seed) from `SeededRows` to fix that sample's augmentation.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, transform: A.Compose, labels: np.ndarray | None = None):
        self.images, self.rows, self.transform, self.labels = images, rows, transform, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            reseed(self.transform, seed)
        image = np.asarray(self.images[self.rows[i]])
        x = self.transform(image=image if image.flags.writeable else image.copy())["image"]  # (a read-only map)
        if self.labels is None:
            return x
        return x, int(self.labels[i])


def _zoom(x: torch.Tensor, keep: float = 0.875) -> torch.Tensor:
    h, w = x.shape[-2:]
    dh, dw = round(h * (1 - keep) / 2), round(w * (1 - keep) / 2)
    return F.interpolate(x[..., dh : h - dh, dw : w - dw], size=(h, w), mode="bilinear", align_corners=False)


def _zoom_out(x: torch.Tensor, factor: float = 1.15) -> torch.Tensor:
    """The other scale to `_zoom`'s (which enlarges by 1 / 0.875, about 1.14x): the image shrunk by `factor`, its
    border reflected back to the same size, so any network takes it."""
    h, w = x.shape[-2:]
    sh, sw = round(h / factor), round(w / factor)
    small = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
    top, left = (h - sh) // 2, (w - sw) // 2
    return F.pad(small, (left, w - sw - left, top, h - sh - top), mode="reflect")


TTA = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "zoom": _zoom,
    "zoom_out": _zoom_out,
}
