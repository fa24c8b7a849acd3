"""Archives for a second real-image check, whose test images come from source images no train image used.

`photos` shows every driver the same ten photographs, one per class, so its "unseen drivers" are the
same pictures under new crops. Here each class has many source images, split once between train and test:

- State Farm-like (`write_statefarm_like`): 10 classes, each a handwritten digit from scikit-learn's 1,797 real
  scans (about 180 per class, by 43 writers), shown on a card that the driver holds in front of a background cut
  from a real photo, with a real LFW face and the driver's own light and pose (`photos`' drivers).
  Train drivers see 70% of each class's scans, test drivers only the other 30%, backgrounds and faces no train
  driver had. Frames of one driver and class reuse two scans, so they are near duplicates, as in video.
- Dogs vs Cats-like (`write_dogscats_like`): "dog" is one of LFW's 100 real face crops and "cat" one of its 100
  real non-face crops (scikit-image's `lfw_subset`), pasted on a background cut from a real photo, at a size,
  place and light of its own, in images of 80-128 px. Each crop appears once; the test set's crops and
  backgrounds are held out from training.

Nothing here is drawn by the demo generator, and no setting of the pipeline was chosen on these archives (the
finetuning fix of issue 17 was chosen on the demo); see benchmarks/RESULTS.md for which seed reported what.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data.demo import _zip_bytes
from photos import (_TEST_BACKGROUNDS, _TRAIN_BACKGROUNDS, _background, _driver_looks, _jpeg, _light,
                             _look, _paste_face, _soft_mask)

CLASSES = tuple(f"c{i}" for i in range(10))
_ZIP_DATE = (2016, 4, 5, 0, 0, 0)  # fixed, so the same arguments give byte-identical archives
_TEST_SHARE = 0.3  # of each class's source images, kept for the test set


def _scans() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships inside scikit-learn: nothing is downloaded

    digits = load_digits()
    return digits.images, digits.target


def _split(rng: np.random.Generator, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    items = rng.permutation(items)
    n_test = int(round(len(items) * _TEST_SHARE))
    return items[n_test:], items[:n_test]


def _card(scan: np.ndarray, height: int, rng: np.random.Generator) -> Image.Image:
    """A digit scan (8x8, 0-16 ink) as dark ink on a slightly tinted card of `height` pixels."""
    ink = scan / 16.0
    paper = rng.uniform(0.75, 0.95, 3)
    arr = paper[None, None, :] * (1 - 0.85 * ink[:, :, None])
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    side = int(height * 0.7)
    card = Image.new("RGB", (int(height * 0.8), height), tuple(int(v * 255) for v in paper))
    card.paste(img.resize((side, side), Image.Resampling.BILINEAR), ((card.width - side) // 2, (height - side) // 2))
    return card


def _statefarm_frame(rng, look, scan, height_share, angle, size, background) -> Image.Image:
    w, h = size
    img = background.copy()
    _paste_face(img, rng, look)
    card = _card(scan, max(12, int(h * height_share * rng.uniform(0.97, 1.03))), rng)
    a = angle + rng.normal(0, 1.5)
    mask = Image.new("L", card.size, 255).rotate(a, Image.Resampling.BILINEAR, expand=True)
    card = card.rotate(a, Image.Resampling.BILINEAR, expand=True)
    cx = look["anchor"][0] * w + rng.normal(0, 2)
    cy = look["anchor"][1] * h + rng.normal(0, 2)
    img.paste(card, (int(cx - card.width / 2), int(cy - card.height / 2)), mask)
    return _light(img, rng, look)


def _write_zip(target, files: dict[str, bytes]) -> None:
    """`files` into a zip at `target` (a path or a binary buffer), in name order, with a fixed date."""
    with zipfile.ZipFile(target, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])


def _save(path: Path, answers: Path, files: dict[str, bytes], test_rows: list[tuple[str, str]]) -> Path:
    answers.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(test_rows, columns=["id", "label"]).to_csv(answers, index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_zip(path, files)
    return path


def write_statefarm_like(path: Path, answers: Path, seed: int, drivers: int = 10, test_drivers: int = 4,
                         per_class: int = 14, test_per_class: int = 6, size: tuple[int, int] = (160, 120)) -> Path:
    """A zip in Kaggle's State Farm layout (see the module's docstring) and `answers` (`id,label` of the test
    images). `size` is (width, height); the same arguments give a byte-identical zip."""
    rng = np.random.default_rng(seed)
    images, target = _scans()
    pools = {c: _split(rng, np.flatnonzero(target == i)) for i, c in enumerate(CLASSES)}
    looks = _driver_looks(rng, drivers, test_drivers)
    subjects = [f"p{2 + 3 * i:03d}" for i in range(drivers + test_drivers)]
    total = 10 * (drivers * per_class + test_drivers * test_per_class)
    numbers = iter(rng.choice(max(100_000, 10 * total), size=total, replace=False) + 1)
    files, rows, test_rows = {}, [], []
    for d, look in enumerate(looks):
        test = d >= drivers
        background = _background(look, size)
        for label in CLASSES:
            scans = rng.choice(pools[label][1 if test else 0], size=2, replace=False)
            share, angle = rng.uniform(0.35, 0.5) * look["scale"], rng.uniform(-15, 15)
            for k in range(test_per_class if test else per_class):
                frame = _statefarm_frame(rng, look, images[scans[k % 2]], share, angle, size, background)
                name = f"img_{next(numbers)}.jpg"
                if test:
                    files[f"imgs/test/{name}"] = _jpeg(frame)
                    test_rows.append((name, label))
                else:
                    files[f"imgs/train/{label}/{name}"] = _jpeg(frame)
                    rows.append((subjects[d], label, name))
    test_rows.sort()  # name order: the test set's order says nothing about driver or class
    files["driver_imgs_list.csv"] = pd.DataFrame(rows, columns=["subject", "classname", "img"]).to_csv(
        index=False).encode()
    files["sample_submission.csv"] = pd.DataFrame({"img": [n for n, _ in test_rows],
                                                   **{c: 0.1 for c in CLASSES}}).to_csv(index=False).encode()
    return _save(path, answers, files, test_rows)


def _pet(rng: np.random.Generator, crop: np.ndarray, background: str) -> Image.Image:
    """One LFW crop (25x25 grey) on a cut of a real background photo, at its own size, place and light."""
    w, h = (int(v) for v in rng.integers(80, 129, size=2))
    look = _look(rng, background, 0)
    img = _background(look, (w, h))
    side = int(min(w, h) * rng.uniform(0.45, 0.8))
    tone = rng.uniform(0.8, 1.15, 3)
    patch = np.repeat(crop[:, :, None], 3, axis=2).astype(np.float32) * tone
    patch = Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    img.paste(patch, (int(rng.uniform(0, w - side)), int(rng.uniform(0, h - side))),
              _soft_mask(side, side, feather=max(1.0, side / 14)))
    return _light(img, rng, look)


def write_dogscats_like(path: Path, answers: Path, seed: int) -> Path:
    """A zip in Kaggle's Dogs vs Cats Redux layout (see the module's docstring) and `answers` (`id,label`)."""
    rng = np.random.default_rng(seed)
    with_faces = _faces_and_patches()
    train, test, test_rows = {}, {}, []
    items = []
    for label, crops in (("dog", with_faces[:100]), ("cat", with_faces[100:])):
        fit, held = _split(rng, np.arange(len(crops)))
        items += [("train", label, crops[i]) for i in fit] + [("test", label, crops[i]) for i in held]
    ids = iter(rng.permutation(sum(1 for split, *_ in items if split == "test")) + 1)
    counters = {"dog": 0, "cat": 0}
    for split, label, crop in items:
        pool = _TEST_BACKGROUNDS if split == "test" else _TRAIN_BACKGROUNDS
        data = _jpeg(_pet(rng, crop, pool[int(rng.integers(len(pool)))]))
        if split == "train":
            train[f"train/{label}.{counters[label]}.jpg"] = data
            counters[label] += 1
        else:
            i = next(ids)
            test[f"test/{i}.jpg"] = data
            test_rows.append((str(i), label))
    test_rows.sort(key=lambda r: int(r[0]))
    files = {"train.zip": _zip_bytes(train), "test.zip": _zip_bytes(test),
             "sample_submission.csv": pd.DataFrame({"id": [int(i) for i, _ in test_rows], "label": 0.5}).to_csv(
                 index=False).encode()}
    return _save(path, answers, files, test_rows)


def _faces_and_patches() -> np.ndarray:
    """scikit-image's `lfw_subset`: 100 face crops, then 100 non-face crops, as 0-255 greys."""
    from importlib import resources

    with (resources.files("skimage") / "data" / "lfw_subset.npy").open("rb") as f:
        crops = np.load(f)
    return crops * 255 if crops.max() <= 1 else crops
