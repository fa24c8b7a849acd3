"""A State Farm-shaped archive built from real photographs, to judge the pipeline's defaults off the demo's shapes.

The built-in demo draws its frames, and what a network learns from drawn shapes says little about how the
defaults fare on photographs. This module composes frames from real photos that ship inside installed packages
(scikit-image's sample data, scikit-learn's sample images, matplotlib's Grace Hopper), so nothing is
downloaded and nothing is drawn, and writes them in Kaggle's exact State Farm layout: point
`statefarm.data.source` at the zip and score the test set against the answers file.

How the frames mimic State Farm's in-car video:
- each driver has a look shared by all their frames: a background cut from a real photo, a face from the LFW
  sample, their own lighting (gain, colour cast, saturation, gamma) and their own pose (where things sit);
- the class is the photographic object in the frame (the cat's face, the coffee cup, the rocket, ...), one
  distinct source photo per class, seen through a crop, scale and small rotation chosen per driver and class;
- frames of one driver and class are near duplicates (small jitter), so a split that ignores drivers scores too
  well, and test drivers use background photos, faces and lighting no train driver has, so only CV grouped by
  driver estimates the test score honestly.

Difficulty was calibrated with `benchmarks/photo_baselines.py`, both baselines trained on the train drivers
and scored on the unseen test drivers, over seeds 0-6 at the defaults: logistic regression on pretrained
EfficientNet-Lite0 features reaches 0.73-0.91 accuracy (log loss 0.36-0.76), so pretraining matters and the
check is not saturated; a small CNN from scratch reaches 0.13-0.44 (chance 0.1), overconfident in log loss.
With only 4 test drivers the figures move a lot from seed to seed: compare configurations on the same seeds.
"""

from __future__ import annotations

import argparse
import functools
import io
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

CLASSES = tuple(f"c{i}" for i in range(10))
_ZIP_DATE = (2016, 4, 5, 0, 0, 0)  # fixed, so the same arguments give byte-identical archives
_JPEG_QUALITY = 90

# One distinct real photo per class, and the box (fractions of width and height) around its object: the class
# must be photographic content, never where or how bright something is, which the driver's look also changes.
_OBJECTS = {
    "c0": (("skimage", "chelsea.png"), (0.38, 0.00, 0.95, 0.92)),  # the cat's face
    "c1": (("skimage", "coffee.png"), (0.02, 0.05, 0.72, 0.95)),  # cup and saucer
    "c2": (("skimage", "rocket.jpg"), (0.30, 0.10, 0.70, 0.95)),  # rocket on the pad
    "c3": (("skimage", "astronaut.png"), (0.05, 0.00, 0.65, 0.90)),  # astronaut
    "c4": (("skimage", "coins.png"), (0.00, 0.00, 1.00, 1.00)),  # coins
    "c5": (("skimage", "camera.png"), (0.15, 0.05, 0.75, 0.95)),  # cameraman
    "c6": (("skimage", "motorcycle_left.png"), (0.10, 0.20, 0.95, 0.95)),  # motorcycle
    "c7": (("sklearn", "flower.jpg"), (0.25, 0.05, 0.75, 0.95)),  # dahlia
    "c8": (("matplotlib", "grace_hopper.jpg"), (0.10, 0.00, 0.90, 0.90)),  # Grace Hopper
    "c9": (("sklearn", "china.jpg"), (0.05, 0.00, 0.55, 1.00)),  # pagoda
}

# Background photos, split so that no test driver sits in front of a photo any train driver had; each half
# mixes the same kinds (texture, dark field, tissue, text, flat grey) so the test shift is fair, not extreme.
_TRAIN_BACKGROUNDS = ("brick.png", "grass.png", "hubble_deep_field.jpg", "ihc.png", "page.png", "cell.png")
_TEST_BACKGROUNDS = ("gravel.png", "retina.jpg", "moon.png", "text.png", "clock_motion.png")
_TEST_FACE_SHARE = 0.3  # the last 30% of LFW's 100 faces belong to test drivers only

# Difficulty, tuned so that neither baseline in benchmarks/photo_baselines.py finds the check trivial or hopeless:
# bigger, more complete, more colourful, less tilted objects make it easier for both.
_OBJECT_HEIGHT = (0.32, 0.5)  # share of the frame's height: a moderate part of the frame, never all of it
_CROP_AREA = (0.35, 0.95)  # share of the object's box that a driver's camera sees
_TILT = 20.0  # degrees either way
_SATURATION = (0.3, 1.2)  # from a near-greyscale camera to a vivid one


@functools.lru_cache(maxsize=None)
def _photo(package: str, name: str) -> Image.Image:
    """A sample photo read straight from the installed package's files, so no loader can reach the network.

    Photos are shrunk to at most 480 px once: every crop used is smaller, and it keeps generation fast.
    """
    folders = {"skimage": ("skimage", "data"), "sklearn": ("sklearn", "datasets/images"),
               "matplotlib": ("matplotlib", "mpl-data/sample_data")}
    module, folder = folders[package]
    with (resources.files(module) / folder / name).open("rb") as f:
        img = Image.open(f).convert("RGB")
    img.thumbnail((480, 480), Image.Resampling.LANCZOS)
    return img


@functools.lru_cache(maxsize=None)
def _faces() -> np.ndarray:
    with (resources.files("skimage") / "data" / "lfw_subset.npy").open("rb") as f:
        faces = np.load(f)[:100]  # the first 100 are faces, the rest are background patches
    return faces * 255 if faces.max() <= 1 else faces  # stored as floats in [0, 1] in current releases


def _driver_looks(rng: np.random.Generator, drivers: int, test_drivers: int) -> list[dict]:
    """Train drivers first, then test drivers, each drawing background photos and faces from their own pool."""
    n_test_faces = int(100 * _TEST_FACE_SHARE)
    train_faces = rng.permutation(100 - n_test_faces)
    test_faces = 100 - n_test_faces + rng.permutation(n_test_faces)
    looks = []
    for i in range(drivers + test_drivers):
        test = i >= drivers
        j = i - drivers if test else i
        pool, faces = (_TEST_BACKGROUNDS, test_faces) if test else (_TRAIN_BACKGROUNDS, train_faces)
        looks.append(_look(rng, pool[j % len(pool)], int(faces[j % len(faces)])))
    return looks


def _look(rng: np.random.Generator, background: str, face: int) -> dict:
    return {
        "background": background,
        "bg_zoom": rng.uniform(0.35, 0.9),  # share of the photo's shorter side the camera sees
        "bg_corner": rng.uniform(0, 1, 2),
        "face": face,
        "skin": rng.uniform(0.75, 1.15, 3),
        "face_xy": (rng.uniform(0.15, 0.85), rng.uniform(0.05, 0.35)),
        "anchor": (rng.uniform(0.38, 0.62), rng.uniform(0.45, 0.62)),  # where the object sits: the pose
        "scale": rng.uniform(0.85, 1.15),
        "gain": rng.uniform(0.5, 1.4),
        "cast": rng.uniform(0.78, 1.22, 3),
        "saturation": rng.uniform(*_SATURATION),
        "gamma": rng.uniform(0.75, 1.35),
        "blur": rng.uniform(0, 1.0),  # focus and motion differ from camera to camera
    }


def _scene(rng: np.random.Generator, look: dict) -> dict:
    """How one driver shows one class's object: a crop, size, tilt and place, then jittered per frame."""
    area = rng.uniform(*_CROP_AREA)
    aspect = rng.uniform(0.75, 1.33)
    cw, ch = min(1.0, np.sqrt(area * aspect)), min(1.0, np.sqrt(area / aspect))
    return {
        "crop": (rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch), cw, ch),
        "height": rng.uniform(*_OBJECT_HEIGHT) * look["scale"],
        "angle": rng.uniform(-_TILT, _TILT),
        "offset": rng.normal(0, 0.04, 2),
    }


def _background(look: dict, size: tuple[int, int]) -> Image.Image:
    photo = _photo("skimage", look["background"])
    w, h = size
    side = look["bg_zoom"] * min(photo.size)
    cw, ch = (side, side * h / w) if w >= h else (side * w / h, side)
    x0 = look["bg_corner"][0] * (photo.width - cw)
    y0 = look["bg_corner"][1] * (photo.height - ch)
    return photo.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))


def _soft_mask(w: int, h: int, feather: float) -> Image.Image:
    """An ellipse with a blurred rim, so a pasted photo has no hard rectangular edge to give its class away."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2
    alpha = np.clip((1.15 - r) / 0.3, 0, 1) * 255
    return Image.fromarray(alpha.astype(np.uint8)).filter(ImageFilter.GaussianBlur(feather))


def _object_patch(rng: np.random.Generator, label: str, scene: dict, frame_h: int):
    (package, name), (bx0, by0, bx1, by1) = _OBJECTS[label]
    photo = _photo(package, name)
    W, H = photo.size
    cx, cy, cw, ch = scene["crop"] + rng.normal(0, 0.015, 4)  # per-frame jitter: the hand never holds still
    cw, ch = np.clip(cw, 0.3, 1.0), np.clip(ch, 0.3, 1.0)
    cx, cy = np.clip(cx, 0, 1 - cw), np.clip(cy, 0, 1 - ch)
    box = (W * (bx0 + (bx1 - bx0) * cx), H * (by0 + (by1 - by0) * cy),
           W * (bx0 + (bx1 - bx0) * (cx + cw)), H * (by0 + (by1 - by0) * (cy + ch)))
    ph = max(8, int(frame_h * scene["height"] * rng.uniform(0.97, 1.03)))
    pw = max(8, int(ph * (box[2] - box[0]) / (box[3] - box[1])))
    patch = photo.resize((pw, ph), Image.Resampling.BILINEAR, box=box)
    mask = _soft_mask(pw, ph, feather=max(1.0, ph / 30))
    angle = scene["angle"] + rng.normal(0, 1.5)
    patch = patch.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    mask = mask.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    return patch, mask


def _paste_face(img: Image.Image, rng: np.random.Generator, look: dict) -> None:
    w, h = img.size
    side = max(8, int(h * 0.3))
    face = np.repeat(_faces()[look["face"]][:, :, None], 3, axis=2).astype(np.float32) * look["skin"]
    face = Image.fromarray(np.clip(face, 0, 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    fx = int(look["face_xy"][0] * (w - side) + rng.normal(0, 1))
    fy = int(look["face_xy"][1] * (h - side) + rng.normal(0, 1))
    img.paste(face, (fx, fy), _soft_mask(side, side, feather=max(1.0, side / 12)))


def _light(img: Image.Image, rng: np.random.Generator, look: dict) -> Image.Image:
    """The driver's camera and cabin light, applied to the whole frame, object included, as a car's would be."""
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(look["blur"])), dtype=np.float32) / 255
    grey = arr.mean(axis=2, keepdims=True)
    arr = grey + look["saturation"] * (arr - grey)
    arr = np.clip(arr, 0, 1) ** look["gamma"]
    arr = arr * look["gain"] * look["cast"] * rng.uniform(0.96, 1.04)
    arr = arr * 255 + rng.normal(0, 3, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def photo_frame(rng: np.random.Generator, look: dict, scene: dict, label: str,
                size: tuple[int, int], background: Image.Image) -> Image.Image:
    """One frame: the driver's background and face, the class's object at the driver's pose, the driver's light."""
    w, h = size
    img = background.copy()
    _paste_face(img, rng, look)
    patch, mask = _object_patch(rng, label, scene, h)
    cx = (look["anchor"][0] + scene["offset"][0]) * w + rng.normal(0, 1.5)
    cy = (look["anchor"][1] + scene["offset"][1]) * h + rng.normal(0, 1.5)
    img.paste(patch, (int(cx - patch.width / 2), int(cy - patch.height / 2)), mask)
    return _light(img, rng, look)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _frames(rng: np.random.Generator, looks: list[dict], count: int, size: tuple[int, int]):
    """Yield (driver index, class, JPEG bytes), `count` frames per driver and class, in video-like runs."""
    for d, look in enumerate(looks):
        background = _background(look, size)
        for label in CLASSES:
            scene = _scene(rng, look)
            for _ in range(count):
                yield d, label, _jpeg(photo_frame(rng, look, scene, label, size, background))


def write_photo_archive(path: Path, answers: Path, seed: int = 0, drivers: int = 10, test_drivers: int = 4,
                        per_class: int = 14, test_per_class: int = 6,
                        size: tuple[int, int] = (160, 120)) -> Path:
    """Write `path`, a zip in Kaggle's State Farm layout made of real photos, and the secret test labels.

    Train: `drivers` drivers x 10 classes x `per_class` frames under `imgs/train/<class>/img_<n>.jpg`, listed in
    `driver_imgs_list.csv`; test: `test_drivers` further drivers x 10 x `test_per_class` under
    `imgs/test/img_<n>.jpg`, with `sample_submission.csv`. Image numbers are shuffled and unique across train
    and test, so they leak neither class nor driver. `answers` gets `id,label` for the test images.
    `size` is (width, height). The same arguments give a byte-identical zip.
    """
    size = (int(size[0]), int(size[1]))  # a list from YAML or JSON works too
    rng = np.random.default_rng(seed)
    looks = _driver_looks(rng, drivers, test_drivers)
    subjects = [f"p{2 + 3 * i:03d}" for i in range(drivers + test_drivers)]
    total = 10 * (drivers * per_class + test_drivers * test_per_class)
    numbers = iter(rng.choice(max(100_000, 10 * total), size=total, replace=False) + 1)
    files, rows, test_rows = {}, [], []
    for d, label, data in _frames(rng, looks[:drivers], per_class, size):
        name = f"img_{next(numbers)}.jpg"
        files[f"imgs/train/{label}/{name}"] = data
        rows.append((subjects[d], label, name))
    for d, label, data in _frames(rng, looks[drivers:], test_per_class, size):
        name = f"img_{next(numbers)}.jpg"
        files[f"imgs/test/{name}"] = data
        test_rows.append((name, label))
    test_rows.sort()  # in name order, so the test set's order says nothing about driver or class
    listing = pd.DataFrame(rows, columns=["subject", "classname", "img"])
    sample = pd.DataFrame({"img": [n for n, _ in test_rows], **{c: 0.1 for c in CLASSES}})
    files["driver_imgs_list.csv"] = listing.to_csv(index=False).encode()
    files["sample_submission.csv"] = sample.to_csv(index=False).encode()
    answers.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(test_rows, columns=["id", "label"]).to_csv(answers, index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A State Farm-layout zip of real photos, and its test answers.")
    parser.add_argument("archive", type=Path, help="the zip to write, e.g. photos.zip")
    parser.add_argument("answers", type=Path, help="the test images' labels (id,label), for `pipeline score`")
    parser.add_argument("--seed", type=int, default=0, help="which drivers and frames (2: the reported seed)")
    args = parser.parse_args(argv)
    write_photo_archive(args.archive, args.answers, args.seed)
    print(f"wrote {args.archive} and {args.answers}")


if __name__ == "__main__":
    main()
