"""Demo images of the two code competitions (Cassava Leaf Disease, Aerial Cactus Identification), and the hidden
test set Kaggle swaps in when it re-runs a notebook.

Like the other demos, each cue only leans to its class (faint on some images, with look-alike distractors on
others), so the demo's CV is neither perfect nor noise. Cassava's visible test folder holds one image, as Kaggle's
does; `hidden_test` makes a larger one of the same kind, whose labels only the caller knows.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CASSAVA_SIZE = (160, 120)  # (width, height): Kaggle's 800x600 photos, scaled down 5x
CACTUS_SIZE = (32, 32)  # Kaggle's thumbnails are 32x32 already


def _ground(rng: np.random.Generator, size: tuple[int, int], base, noise: float) -> Image.Image:
    w, h = size
    arr = np.asarray(base, dtype=np.float64)[None, None, :] + rng.normal(0, noise, (h, w, 3))
    arr += np.linspace(-20, 20, w)[None, :, None] * rng.choice([-1, 1])
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _spots(draw: ImageDraw.ImageDraw, rng, box, count: int, colour, radius: tuple[float, float], angular: bool):
    x0, y0, x1, y1 = box
    for _ in range(count):
        x, y, r = rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(*radius)
        if angular:  # bacterial blight's spots are bounded by veins: polygons, not circles
            pts = [(x + r * np.cos(a), y + r * np.sin(a)) for a in np.sort(rng.uniform(0, 2 * np.pi, 5))]
            draw.polygon(pts, fill=colour)
        else:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def leaf_image(rng: np.random.Generator, label: str) -> Image.Image:
    """A cassava leaf on soil and grass: 0 brown angular spots (CBB), 1 yellow streaks along the veins (CBSD),
    2 a faint pale mottle (CGM), 3 a strong yellow mosaic on a narrow, twisted leaf (CMD), 4 healthy. Each cue's
    strength varies, and healthy leaves carry a few dark specks of dirt."""
    img = _ground(rng, CASSAVA_SIZE, rng.uniform([70, 60, 30], [130, 120, 70]), 14)
    w, h = CASSAVA_SIZE
    strength = rng.uniform(0.2, 1.0)
    green = np.array([rng.uniform(40, 90), rng.uniform(110, 170), rng.uniform(30, 70)])
    narrow = rng.uniform(0.35, 0.55) if label == "3" else rng.uniform(0.5, 0.8)
    lw, lh = rng.uniform(0.55, 0.85) * w, rng.uniform(0.55, 0.85) * h * narrow / 0.65
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    leaf = Image.new("RGB", CASSAVA_SIZE, tuple(int(v) for v in green))
    draw = ImageDraw.Draw(leaf)
    box = (cx - lw / 2, cy - lh / 2, cx + lw / 2, cy + lh / 2)

    def tint(colour):  # the cue's colour blended into the leaf by its strength
        return tuple(int(g + strength * (c - g)) for g, c in zip(green, colour))

    for k in range(5):  # veins
        y = box[1] + (k + 1) * lh / 6
        draw.line([box[0], cy, box[2], y], fill=tint((200, 220, 160)) if label == "1" else tuple(int(v * 1.15)
                                                                                                 for v in green), width=2)
    if label == "0":
        _spots(draw, rng, box, int(rng.integers(3, 10)), tint((90, 55, 20)), (3, 7), angular=True)
    elif label == "1":
        for _ in range(int(rng.integers(2, 6))):
            y = rng.uniform(box[1], box[3])
            draw.line([rng.uniform(box[0], cx), y, rng.uniform(cx, box[2]), y + rng.normal(0, 6)],
                      fill=tint((230, 210, 60)), width=int(rng.integers(2, 5)))
    elif label == "2":
        _spots(draw, rng, box, int(rng.integers(8, 20)), tint((150, 200, 110)), (2, 5), angular=False)
    elif label == "3":
        _spots(draw, rng, box, int(rng.integers(10, 25)), tint((220, 220, 70)), (3, 8), angular=False)
    else:
        _spots(draw, rng, box, int(rng.integers(0, 3)), (60, 50, 30), (1, 2), angular=False)
    mask = Image.new("L", CASSAVA_SIZE, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    img.paste(leaf.filter(ImageFilter.GaussianBlur(0.6)), (0, 0), mask.rotate(rng.uniform(-40, 40), center=(cx, cy)))
    return img


def aerial_image(rng: np.random.Generator, label: str) -> Image.Image:
    """A 32x32 aerial thumbnail of desert: '1' holds a columnar cactus seen from above (a small, elongated green
    shape with a dark shadow on one side), '0' none. Both may hold round shrubs and rocks; some cacti are faint
    or cut by the edge."""
    img = _ground(rng, CACTUS_SIZE, rng.uniform([150, 120, 80], [210, 180, 140]), 10)
    draw = ImageDraw.Draw(img)
    w, h = CACTUS_SIZE
    for _ in range(int(rng.integers(0, 4))):  # shrubs and rocks, in either class
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.5, 4)
        colour = (tuple(int(v) for v in rng.uniform([60, 80, 40], [100, 120, 70])) if rng.random() < 0.6
                  else tuple(int(v) for v in rng.uniform(90, 150, 3)))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    if label == "1":
        strength = rng.uniform(0.4, 1.0)
        x, y = rng.uniform(2, w - 2), rng.uniform(2, h - 2)
        length, angle = rng.uniform(5, 12), rng.uniform(0, np.pi)
        dx, dy = length * np.cos(angle) / 2, length * np.sin(angle) / 2
        ground = np.asarray(img.getpixel((int(x), int(y))), dtype=np.float64)
        body = tuple(int(g + strength * (c - g)) for g, c in zip(ground, (70, 130, 60)))
        shadow = tuple(int(g + strength * (c - g)) for g, c in zip(ground, (40, 35, 30)))
        draw.line([x - dx + 2, y - dy + 2, x + dx + 2, y + dy + 2], fill=shadow, width=3)
        draw.line([x - dx, y - dy, x + dx, y + dy], fill=body, width=3)
    return img.filter(ImageFilter.GaussianBlur(0.4))


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


IMAGES = {"cassava": leaf_image, "cactus": aerial_image}
"""Each code competition's image maker, by record name."""


def image_id(rng: np.random.Generator, comp_name: str) -> str:
    """A file name as the competition spells them: Cassava's are numbers, the cactus thumbnails' are hex hashes."""
    if comp_name == "cassava":
        return f"{int(rng.integers(1_000_000, 4_300_000_000))}.jpg"
    return f"{rng.bytes(16).hex()}.jpg"


def labelled_images(comp_name: str, labels, rng: np.random.Generator) -> list[tuple[str, str, bytes]]:
    """An (id, label, JPEG bytes) of the competition for each of `labels`."""
    out, seen = [], set()
    for label in labels:
        name = image_id(rng, comp_name)
        while name in seen:
            name = image_id(rng, comp_name)
        seen.add(name)
        out.append((name, label, jpeg(IMAGES[comp_name](rng, label))))
    return out


def hidden_test(comp, count: int, seed: int, folder: Path) -> list[tuple[str, str]]:
    """Kaggle's swap at scoring, for the demo: `count` new test images written to `folder/<test dir>/`, with a
    matching `folder/sample_submission.csv`. Returns the secret (id, label) pairs."""
    rng = np.random.default_rng([seed, 7, sum(comp.name.encode())])
    images = labelled_images(comp.name, [str(c) for c in rng.choice(comp.classes, count)], rng)
    test_dir = folder / comp.test_pattern.split("/")[0]
    test_dir.mkdir(parents=True, exist_ok=True)
    for name, _, data in images:
        (test_dir / name).write_bytes(data)
    blank = "0.5" if comp.submission == "binary" else comp.classes[0]
    (folder / "sample_submission.csv").write_text(
        f"{comp.id_column},{comp.submission_columns[0]}\n" + "".join(f"{name},{blank}\n" for name, _, _ in images))
    return [(name, label) for name, label, _ in images]


def zipped(files: dict[str, bytes], date=(2019, 3, 8, 0, 0, 0)) -> bytes:
    """A zip of `files` (name -> bytes) with a fixed date: the same images give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=date)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()
