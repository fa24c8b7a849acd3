"""A deterministic miniature of each competition's Kaggle archive, in its exact layout.

The images carry a class signal that a small CNN trained from scratch picks up in a few epochs, so the whole
pipeline can run offline. In the State Farm demo every driver has a look of their own (light, colours, seat
position) and their frames are near duplicates, so a split that ignores drivers scores too well, as on Kaggle.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.competitions import Competition
from pipeline.config import DemoParams
from pipeline.errors import ConfigError
from pipeline.io import write_csv

_ZIP_DATE = (2016, 4, 5, 0, 0, 0)  # fixed, so the same params give byte-identical archives
STATEFARM_SIZE = (128, 96)  # (width, height): 640x480 frames, scaled down 5x


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            _add(zf, name, data)
    return buf.getvalue()


def _noisy_background(rng: np.random.Generator, w: int, h: int, base: np.ndarray) -> Image.Image:
    grad = np.linspace(-30, 30, w)[None, :, None] * rng.choice([-1, 1])
    arr = base[None, None, :] + grad + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def pet_image(rng: np.random.Generator, label: str) -> Image.Image:
    """A 'cat' (ellipse, horizontal stripes) or 'dog' (box, vertical stripes); flip-invariant, like the real pets."""
    w, h = (int(v) for v in rng.integers(72, 129, size=2))
    img = _noisy_background(rng, w, h, rng.uniform(40, 215, 3))
    draw = ImageDraw.Draw(img)
    side = rng.uniform(0.5, 0.8) * min(w, h)
    x0 = rng.uniform(0, w - side)
    y0 = rng.uniform(0, h - side)
    box = [x0, y0, x0 + side, y0 + side]
    fur = tuple(int(v) for v in rng.uniform(0, 255, 3))
    stripe = tuple(255 - v for v in fur)
    (draw.ellipse if label == "cat" else draw.rectangle)(box, fill=fur)
    mask = Image.new("L", img.size, 0)
    (ImageDraw.Draw(mask).ellipse if label == "cat" else ImageDraw.Draw(mask).rectangle)(box, fill=255)
    stripes = Image.new("RGB", img.size, stripe)
    period = max(6, int(side / 5))
    band = np.zeros((h, w), dtype=np.uint8)
    if label == "cat":
        band[(np.arange(h) // (period // 2)) % 2 == 0, :] = 255
    else:
        band[:, (np.arange(w) // (period // 2)) % 2 == 0] = 255
    stripe_mask = Image.fromarray(np.minimum(np.array(mask), band))
    img.paste(stripes, (0, 0), stripe_mask)
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
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            _add(zf, name, data)
    return path


# Digit Recognizer: MNIST-like 28x28 greyscale digits drawn from pen strokes. Each digit is a skeleton of one
# or more polylines on a box of height 1 (x right, y down), some with style variants (7 with a crossbar, an
# open or closed 4, 1 with a flag and a base...); every image jitters the skeleton, its slant, rotation, aspect
# and pen width, then is fitted into a 20x20 box and centred by centre of mass in 28x28, as MNIST was.
DIGIT_SIZE = 28
_DIGIT_BOX = 20  # MNIST's size-normalised box, inside the 28x28 frame
_SUPERSAMPLE = 4
_WARP_WAVES, _WARP_FREQ, _WARP_AMP = 3, 3.0, 0.05
_STROKE_OFFSET = 0.03


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 14) -> list:
    """Points of an elliptic arc from angle t0 to t1 (degrees; 0 is right, 90 is down, as y points down)."""
    t = np.radians(np.linspace(t0, t1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def _bezier(p0, p1, p2, n: int = 10) -> list:
    """Points of a quadratic Bezier curve from p0 to p2 pulled towards p1."""
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.asarray(p0) + 2 * t * (1 - t) * np.asarray(p1) + t**2 * np.asarray(p2)
    return [tuple(p) for p in pts]


def _digit_strokes(digit: int, rng: np.random.Generator) -> list:
    """The strokes of one handwritten `digit`: a style variant drawn from `rng` and its shape parameters
    jittered, as lists of (x, y) points."""
    u = rng.uniform
    style = rng.random()
    if digit == 0:
        start = u(-130, -60)
        return [_arc(0.35, 0.5, u(0.22, 0.34), 0.5, start, start + u(335, 390), 24)]
    if digit == 1:
        stem = [(u(0.4, 0.55), 0.0), (u(0.35, 0.5), 1.0)]
        strokes = [stem]
        if style < 0.55:  # a flag at the top
            strokes = [[(stem[0][0] - u(0.1, 0.2), u(0.2, 0.35)), stem[0], stem[1]]]
        if style < 0.2:  # and a base
            half = u(0.15, 0.25)
            strokes.append([(stem[1][0] - half, 1.0), (stem[1][0] + half, 1.0)])
        return strokes
    if digit == 2:
        top = _arc(0.35, 0.27, u(0.25, 0.32), u(0.22, 0.28), u(170, 210), u(365, 400))
        foot = (u(0.0, 0.1), 1.0)
        neck = [top[-1], foot] if style < 0.5 else _bezier(top[-1], (u(0.2, 0.4), u(0.65, 0.8)), foot)
        if style > 0.85:  # a small loop where the neck meets the base
            loop = _arc(foot[0] + 0.1, foot[1] - 0.08, 0.1, 0.08, 180, -160, 10)
            return [top + neck[1:] + loop[1:] + [(u(0.6, 0.75), 1.0 + u(-0.05, 0.03))]]
        return [top + neck[1:] + [(u(0.6, 0.75), 1.0 + u(-0.05, 0.03))]]
    if digit == 3:
        lower = _arc(0.33, 0.74, u(0.28, 0.34), u(0.23, 0.27), -90, u(140, 170), 16)
        if style < 0.25:  # a flat top
            top = [(u(0.0, 0.1), 0.0), (u(0.6, 0.7), 0.0), (u(0.25, 0.35), u(0.44, 0.5))]
            return [top + lower]
        upper = _arc(0.33, 0.26, u(0.24, 0.3), u(0.23, 0.27), u(190, 220), 450, 16)
        return [upper + lower[1:]]
    if digit == 4:
        bar_y = u(0.55, 0.7)
        stem_x = u(0.45, 0.6)
        if style < 0.5:  # closed: the diagonal meets the stem at its top
            apex = (stem_x + u(-0.05, 0.05), 0.0)
            return [[apex, (u(0.0, 0.08), bar_y), (u(0.7, 0.8), bar_y)], [apex, (stem_x, 1.0)]]
        return [[(u(0.05, 0.2), 0.0), (u(0.0, 0.08), bar_y), (u(0.7, 0.8), bar_y)],  # open
                [(stem_x, u(0.0, 0.2)), (stem_x, 1.0)]]
    if digit == 5:
        corner = (u(0.1, 0.2), 0.0)
        shoulder = (u(0.05, 0.15), u(0.4, 0.5))
        belly = _arc(0.35, 0.7, u(0.27, 0.33), u(0.27, 0.31), u(-150, -125), u(140, 165), 16)
        bar = [corner, (u(0.6, 0.75), u(-0.05, 0.03))]
        if style < 0.5:
            return [bar, [corner, shoulder] + belly]
        return [[bar[1], corner, shoulder] + belly]
    if digit == 6:
        r = u(0.24, 0.3)
        loop = _arc(0.35, 1.0 - r, u(0.24, 0.3), r, 180, -175, 20)
        lead = _bezier((u(0.5, 0.65), 0.0), (u(0.05, 0.2), u(0.1, 0.3)), loop[0])
        return [lead + loop[1:]]
    if digit == 7:
        top_y = u(-0.03, 0.03)
        foot = (u(0.15, 0.35), 1.0)
        corner = (u(0.65, 0.75), 0.0)
        stem = [corner, foot] if style < 0.6 else _bezier(corner, (u(0.4, 0.5), u(0.4, 0.6)), foot)
        strokes = [[(u(0.0, 0.1), top_y)] + stem]
        if style > 0.7:  # a crossbar through the middle of the stem
            mid = stem[len(stem) // 2]
            strokes.append([(mid[0] - u(0.15, 0.22), mid[1]), (mid[0] + u(0.12, 0.2), mid[1] + u(-0.03, 0.03))])
        return strokes
    if digit == 8:
        split = u(0.42, 0.5)
        top = _arc(0.35, split / 2, u(0.18, 0.26), split / 2, 0, 360, 18)
        bottom = _arc(0.35, (1 + split) / 2, u(0.24, 0.32), (1 - split) / 2, 0, 360, 18)
        if style < 0.5:
            return [top, bottom]
        # one stroke: an S down through the waist, then back up
        s = _arc(0.35, split / 2, 0.22, split / 2, -30, -270, 16)
        return [s + _arc(0.35, (1 + split) / 2, 0.28, (1 - split) / 2, -90, 270 - 30, 18) + [s[0]]]
    if digit == 9:
        r = u(0.24, 0.3)
        loop = _arc(0.35, r, u(0.24, 0.32), r, u(-10, 10), u(-360, -340), 18)
        right = (0.35 + u(0.24, 0.3), r)
        if style < 0.6:
            return [loop, [right, (u(0.45, 0.6), 1.0)]]
        return [loop, _bezier(right, (u(0.55, 0.65), 1.0), (u(0.15, 0.3), u(0.85, 0.95)), 8)]  # a hooked tail
    raise ValueError(f"not a digit: {digit}")


def digit_image(rng: np.random.Generator, digit: int) -> np.ndarray:
    """One 28x28 uint8 handwritten `digit`, white on black, in MNIST's layout; deterministic in `rng`."""
    strokes = [np.asarray(s, dtype=np.float64) for s in _digit_strokes(digit, rng)]
    # The hand's wander: a smooth random warp of the whole digit (a few sine waves across the box), each stroke
    # set down a little off, and a slight tremor along the pen's path.
    freq = rng.normal(0, _WARP_FREQ, (_WARP_WAVES, 2))
    phase = rng.uniform(0, 2 * np.pi, _WARP_WAVES)
    amp = rng.normal(0, _WARP_AMP, (_WARP_WAVES, 2))
    strokes = [s + np.sin(s @ freq.T + phase) @ amp + rng.normal(0, _STROKE_OFFSET, 2)
               + rng.normal(0, 0.006, s.shape) for s in strokes]
    slant = np.tan(np.radians(rng.uniform(-15, 15)))
    angle = np.radians(rng.uniform(-10, 10))
    aspect = rng.uniform(0.8, 1.25)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[aspect, -slant], [0.0, 1.0]])
    strokes = [(s - 0.5) @ (rot @ shear).T for s in strokes]
    # Size-normalise the inked shape (skeleton plus pen) into the 20x20 box, on a supersampled canvas.
    k = _SUPERSAMPLE
    pen = rng.uniform(1.5, 3.5) * k
    pts = np.concatenate(strokes)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    scale = (_DIGIT_BOX * k * rng.uniform(0.85, 1.0) - pen) / max(hi - lo)
    centre = DIGIT_SIZE * k / 2
    canvas = Image.new("L", (DIGIT_SIZE * k, DIGIT_SIZE * k), 0)
    draw = ImageDraw.Draw(canvas)
    for s in strokes:
        xy = [(float(x), float(y)) for x, y in (s - (lo + hi) / 2) * scale + centre]
        draw.line(xy, fill=255, width=int(round(pen)), joint="curve")
        for x, y in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    small = np.asarray(canvas.resize((DIGIT_SIZE, DIGIT_SIZE), Image.BOX), dtype=np.float64)
    # Centre by centre of mass, as MNIST did, give or take a pixel.
    ys, xs = np.indices(small.shape)
    mass = small.sum()
    dy = int(round(DIGIT_SIZE / 2 - 0.5 - (ys * small).sum() / mass)) + int(rng.integers(-1, 2))
    dx = int(round(DIGIT_SIZE / 2 - 0.5 - (xs * small).sum() / mass)) + int(rng.integers(-1, 2))
    shifted = np.zeros_like(small)
    src = small[max(0, -dy): DIGIT_SIZE - max(0, dy), max(0, -dx): DIGIT_SIZE - max(0, dx)]
    shifted[max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


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


_BUILDERS["digits"] = _digits_files
