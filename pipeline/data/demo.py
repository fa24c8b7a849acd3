"""A deterministic miniature of each competition's Kaggle archive, in its exact layout.

The images carry a class signal that a small CNN trained from scratch picks up in a few epochs, so the whole
pipeline can run offline. In the State Farm demo every driver has a look of their own (light, colours, seat
position) and their frames are near duplicates, so a split that ignores drivers scores too well, as on Kaggle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.core.competitions import Competition
from pipeline.core.errors import ConfigError
from pipeline.core.io import write_csv
from pipeline.core.sections import DemoParams
from pipeline.data.demo_code import jpeg, labelled_images, zipped
from pipeline.data.demo_digits import DIGIT_SIZE, digit_image

_ZIP_DATE = (2016, 4, 5, 0, 0, 0)  # fixed, so the same params give byte-identical archives
STATEFARM_SIZE = (128, 96)  # (width, height): 640x480 frames, scaled down 5x


_jpeg = jpeg


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    return zipped(files, _ZIP_DATE)


def _noisy_background(rng: np.random.Generator, w: int, h: int, base: np.ndarray) -> Image.Image:
    grad = np.linspace(-30, 30, w)[None, :, None] * rng.choice([-1, 1])
    arr = base[None, None, :] + grad + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# How much a pet shows its class. Each cue only leans one way: a cat's stripes run near horizontal and its body is
# round, a dog's near vertical and square, with spreads that overlap, faint stripes on some pets, and a striped toy
# of either kind beside some. So no one pixel pattern gives the answer, hard pets stay hard, and the demo's CV log
# loss sits well away from 0 (a demo scoring 0.0000 compares nothing), as real photos do.
STRIPE_SPREAD = 30.0  # degrees around horizontal (cat) or vertical (dog)
TOY_CHANCE = 0.5


def _striped(img: Image.Image, box: list[float], round_: float, angle: float,
             fur: tuple, contrast: float) -> None:
    """A rounded box (`round_` 0: square, 1: round) of `fur`, striped at `angle` degrees with `contrast`."""
    w, h = img.size
    side = box[2] - box[0]
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle(box, radius=round_ * side / 2, fill=255)
    img.paste(Image.new("RGB", img.size, fur), (0, 0), mask)
    period = max(6.0, side / 5)
    t = np.radians(angle)
    ys, xs = np.mgrid[0:h, 0:w]
    band = ((xs * np.sin(t) + ys * np.cos(t)) // (period / 2)) % 2 == 0  # lines along `angle` from horizontal
    stripe = tuple(int(f + contrast * (255 - 2 * f)) for f in fur)
    img.paste(Image.new("RGB", img.size, stripe), (0, 0), Image.fromarray(np.minimum(np.array(mask), band * 255)
                                                                          .astype(np.uint8)))


def pet_image(rng: np.random.Generator, label: str) -> Image.Image:
    """A 'cat' (roundish, stripes near horizontal) or 'dog' (squarish, stripes near vertical), each cue noisy;
    flip-invariant, like the real pets (a mirror turns a stripe's angle a into -a, as likely as a)."""
    w, h = (int(v) for v in rng.integers(72, 129, size=2))
    img = _noisy_background(rng, w, h, rng.uniform(40, 215, 3))
    if rng.random() < TOY_CHANCE:  # a small striped toy, of either kind, somewhere
        toy = rng.uniform(0.15, 0.3) * min(w, h)
        x, y = rng.uniform(0, w - toy), rng.uniform(0, h - toy)
        _striped(img, [x, y, x + toy, y + toy], rng.uniform(0, 1), rng.uniform(-90, 90),
                 tuple(int(v) for v in rng.uniform(0, 255, 3)), rng.uniform(0.3, 1.0))
    side = rng.uniform(0.45, 0.8) * min(w, h)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    cat = label == "cat"
    round_ = rng.uniform(0.4, 1.0) if cat else rng.uniform(0.0, 0.6)
    angle = (0.0 if cat else 90.0) + rng.normal(0, STRIPE_SPREAD)
    _striped(img, [x0, y0, x0 + side, y0 + side], round_, angle,
             tuple(int(v) for v in rng.uniform(0, 255, 3)), rng.uniform(0.15, 1.0))
    return img


def _dogscats_files(comp: Competition, demo: DemoParams, rng: np.random.Generator):
    train = {}
    for label in comp.classes:
        for i in range(demo.train_per_class):
            train[f"train/{label}.{i}.jpg"] = _jpeg(pet_image(rng, label))
    answers = [(str(i), str(rng.choice(comp.classes))) for i in range(1, demo.test + 1)]
    test = {f"test/{i}.jpg": _jpeg(pet_image(rng, label)) for i, label in answers}
    sample = pd.DataFrame({"id": range(1, demo.test + 1), "label": 0.5})
    files = {
        "sample_submission.csv": sample.to_csv(index=False).encode(),
        "test.zip": _zip_bytes(test),
        "train.zip": _zip_bytes(train),
    }
    return files, answers


def _muted(rng: np.random.Generator, lo: float, hi: float, spread: float) -> np.ndarray:
    """A low-saturation colour: the demo's activities are told by saturated objects, and a green shirt must
    not look like a phone (real clothes do not change what the driver is doing)."""
    return np.clip(rng.uniform(lo, hi) + rng.uniform(-spread, spread, 3), 0, 255)


def _driver_look(rng: np.random.Generator) -> dict:
    return {
        "background": _muted(rng, 50, 190, 35),
        "shirt": tuple(int(v) for v in _muted(rng, 20, 235, 25)),
        "skin": tuple(int(v) for v in rng.uniform(120, 240, 3)),
        "x": rng.uniform(-12, 12),
        "y": rng.uniform(-6, 6),
        "gain": rng.uniform(0.6, 1.3),
    }


# What the driver holds (colour) and where, relative to the torso's centre, in pixels of the 128x96 frame.
# The colour tells the activity, the position tells which hand: the driver faces the camera, so their right
# hand is on the image's left, and a horizontal flip swaps c1<->c3 and c2<->c4 exactly as on the real frames.
_PHONE, _WHITE = (40, 220, 60), (250, 250, 250)
_POSES = {
    "c0": [((-22, 10), _WHITE), ((22, 10), _WHITE)],  # both hands on the wheel
    "c1": [((-16, 22), _PHONE)],  # texting, right
    "c2": [((-14, -22), _PHONE)],  # phone at the ear, right
    "c3": [((16, 22), _PHONE)],  # texting, left
    "c4": [((14, -22), _PHONE)],  # phone at the ear, left
    "c5": [((40, 14), (255, 150, 0))],  # radio, far to the side
    "c6": [((0, -14), (40, 90, 255))],  # drinking at the mouth
    "c7": [((-40, -30), (230, 30, 30))],  # reaching behind
    "c8": [((0, -40), (230, 40, 220))],  # hair and makeup, above the head
    "c9": [((30, -36), (250, 240, 40))],  # turned to the passenger
}


def driver_frame(rng: np.random.Generator, look: dict, label: str) -> Image.Image:
    """One in-car frame of a driver doing `label`; frames of one driver and class are near duplicates."""
    w, h = STATEFARM_SIZE
    img = _noisy_background(rng, w, h, look["background"])
    draw = ImageDraw.Draw(img)
    cx = w / 2 + look["x"] + rng.normal(0, 1.5)
    cy = h * 0.62 + look["y"] + rng.normal(0, 1.5)
    draw.rectangle([cx - 18, cy - 14, cx + 18, cy + 40], fill=look["shirt"])
    draw.ellipse([cx - 10, cy - 38, cx + 10, cy - 16], fill=look["skin"])
    for (dx, dy), colour in _POSES[label]:
        hx, hy = cx + dx + rng.normal(0, 3), cy + dy + rng.normal(0, 3)
        draw.line([cx, cy, hx, hy], fill=colour, width=5)
        draw.ellipse([hx - 7, hy - 7, hx + 7, hy + 7], fill=colour)
    arr = np.asarray(img, dtype=np.float32) * look["gain"]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _statefarm_files(comp: Competition, demo: DemoParams, rng: np.random.Generator):
    per_driver = max(1, round(demo.train_per_class / demo.drivers))
    n_test_drivers = max(2, demo.drivers // 2)
    drivers = [f"p{2 + 3 * i:03d}" for i in range(demo.drivers + n_test_drivers)]
    looks = {d: _driver_look(rng) for d in drivers}
    files, rows, n = {}, [], 0
    for driver in drivers[: demo.drivers]:
        for label in comp.classes:
            for _ in range(per_driver):
                n += 1
                name = f"img_{n}.jpg"
                files[f"imgs/train/{label}/{name}"] = _jpeg(driver_frame(rng, looks[driver], label))
                rows.append((driver, label, name))
    answers = []
    for _ in range(demo.test):
        n += 1
        driver = drivers[demo.drivers + int(rng.integers(n_test_drivers))]
        answers.append((f"img_{n}.jpg", str(rng.choice(comp.classes))))
        files[f"imgs/test/{answers[-1][0]}"] = _jpeg(driver_frame(rng, looks[driver], answers[-1][1]))
    listing = pd.DataFrame(rows, columns=["subject", "classname", "img"])
    sample = pd.DataFrame({"img": [i for i, _ in answers], **{c: 0.1 for c in comp.submission_columns}})
    files["driver_imgs_list.csv"] = listing.to_csv(index=False).encode()
    files["sample_submission.csv"] = sample.to_csv(index=False).encode()
    return files, answers


_BUILDERS = {"dogscats": _dogscats_files, "statefarm": _statefarm_files}


def write_demo_archive(comp: Competition, demo: DemoParams, seed: int, path: Path,
                       answers: Path | None = None) -> Path:
    """Write `<slug>.zip` for `comp` at `path`, exactly as Kaggle lays it out, deterministic in `seed`.

    The test labels, which Kaggle keeps secret, go to `answers` (outside the archive) when given: with them the
    ensemble reports the demo's true test score beside the CV score, offline.
    """
    if comp.name not in _BUILDERS:
        raise ConfigError(f"{comp.name}.data.source: there is no demo archive of {comp.title} (the demo generator "
                          f"knows {', '.join(_BUILDERS)} only); set it to the path of {comp.slug}.zip, or 'kaggle'.")
    rng = np.random.default_rng([seed, sum(comp.name.encode())])
    files, test_labels = _BUILDERS[comp.name](comp, demo, rng)
    if answers is not None:
        write_csv(answers, pd.DataFrame(test_labels, columns=["id", "label"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(_zip_bytes(files))
    tmp.replace(path)
    return path


def _pixels_csv(images: np.ndarray, labels: list[str] | None) -> bytes:
    """Rows of 784 pixels, `label` first when given, in Kaggle's Digit Recognizer layout."""
    frame = pd.DataFrame(images.reshape(len(images), -1).astype(np.int64),
                         columns=[f"pixel{i}" for i in range(DIGIT_SIZE * DIGIT_SIZE)])
    if labels is not None:
        frame.insert(0, "label", np.asarray([int(v) for v in labels], dtype=np.int64))
    return frame.to_csv(index=False).encode()


def _digits_files(comp: Competition, demo: DemoParams, rng: np.random.Generator):
    labels = [label for label in comp.classes for _ in range(demo.train_per_class)]
    labels = [labels[i] for i in rng.permutation(len(labels))]  # mixed, as in Kaggle's train.csv
    train = np.stack([digit_image(rng, int(label)) for label in labels])
    answers = [(str(i), str(rng.choice(comp.classes))) for i in range(1, demo.test + 1)]
    test = np.stack([digit_image(rng, int(label)) for _, label in answers])
    sample = pd.DataFrame({"ImageId": range(1, demo.test + 1), "Label": 0})
    files = {
        "train.csv": _pixels_csv(train, labels),
        "test.csv": _pixels_csv(test, None),
        "sample_submission.csv": sample.to_csv(index=False).encode(),
    }
    return files, answers


def _code_files(comp: Competition, demo: DemoParams, rng: np.random.Generator):
    """Cassava (loose `train_images/`, `test_images/`) or Aerial Cactus (`train.zip`, `test.zip`): images named by
    id, labels in train.csv, as Kaggle lays them out."""
    labels = [label for label in comp.classes for _ in range(demo.train_per_class)]
    train = labelled_images(comp.name, [labels[i] for i in rng.permutation(len(labels))], rng)
    test = labelled_images(comp.name, [str(c) for c in rng.choice(comp.classes, demo.test)], rng)
    train_dir, test_dir = (p.split("/")[0] for p in (comp.train_pattern, comp.test_pattern))
    train_files = {f"{train_dir}/{name}": data for name, _, data in train}
    test_files = {f"{test_dir}/{name}": data for name, _, data in test}
    listing = pd.DataFrame([(name, label) for name, label, _ in train], columns=[comp.labels_id, comp.labels_label])
    blank = 0.5 if comp.binary else comp.classes[0]
    sample = pd.DataFrame({comp.id_column: [name for name, _, _ in test], comp.submission_columns[0]: blank})
    files = {comp.labels_file: listing.to_csv(index=False).encode(),
             "sample_submission.csv": sample.to_csv(index=False).encode()}
    if comp.name == "cactus":  # the images in nested zips
        files.update({"train.zip": _zip_bytes(train_files), "test.zip": _zip_bytes(test_files)})
    else:
        files.update({**train_files, **test_files, "label_num_to_disease_map.json": json.dumps(
            dict(zip(comp.classes, comp.class_descriptions))).encode()})
    return files, [(name, label) for name, label, _ in test]


_BUILDERS.update(digits=_digits_files, cassava=_code_files, cactus=_code_files)
