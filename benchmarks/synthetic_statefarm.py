"""Synthetic State Farm archives of photo-like frames, for the speed and memory benchmarks (not a benchmark itself).

`write_statefarm_archive` writes a zip in the exact layout of Kaggle's state-farm-distracted-driver-detection.zip:
`imgs/train/c0..c9/img_<n>.jpg`, `imgs/test/img_<n>.jpg`, `driver_imgs_list.csv` (subject, classname, img) and
`sample_submission.csv` (img, c0..c9), members deflated as in Kaggle's zip. The frames are real photographs that
ship inside scikit-image, scikit-learn and matplotlib (no download), each a random 4:3 crop, maybe mirrored, with a
colour and brightness jitter and a little sensor noise, resized to the frame size and saved as JPEG (quality 90):
photo content, so JPEG decoding, including PIL's DCT-domain reduced-size decode (`draft`), costs what it costs on
camera frames, which flat synthetic drawings would not. The labels carry no signal: only speed and memory are
measured with these archives (`photos` makes a learnable archive).

Used by prepare_speed.py, features_speed.py and memory_flat.py (imported from this folder).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import tempfile
import zipfile
from importlib import resources
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

CLASSES = tuple(f"c{i}" for i in range(10))
_ZIP_DATE = (2016, 4, 5, 0, 0, 0)
# Colour photographs that ship with installed packages (package, folder, file); grey ones are left out.
_SOURCES = (
    ("skimage", "data", "astronaut.png"), ("skimage", "data", "chelsea.png"), ("skimage", "data", "coffee.png"),
    ("skimage", "data", "rocket.jpg"), ("skimage", "data", "motorcycle_left.png"), ("skimage", "data", "retina.jpg"),
    ("skimage", "data", "hubble_deep_field.jpg"), ("skimage", "data", "ihc.png"),
    ("sklearn", "datasets/images", "china.jpg"), ("sklearn", "datasets/images", "flower.jpg"),
    ("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"),
)


@functools.lru_cache(maxsize=None)
def _photos() -> tuple[Image.Image, ...]:
    out = []
    for package, folder, name in _SOURCES:
        with (resources.files(package) / folder / name).open("rb") as f:
            out.append(Image.open(f).convert("RGB"))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _noise(size: tuple[int, int]) -> np.ndarray:
    """A fixed field of sensor noise (sd ~2.5 levels), twice the frame's size, cut at random offsets per frame."""
    w, h = size
    return np.random.default_rng(0).normal(0, 2.5, (2 * h, 2 * w, 3)).astype(np.int16)


def photo_frame(seed, size: tuple[int, int] = (640, 480), quality: int = 90) -> bytes:
    """One photo-like frame of `size` (width, height) as JPEG bytes, deterministic in `seed` (an int or ints)."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    w, h = size
    pw, ph = photo.size
    # a 4:3 (the frame's aspect) crop covering 35-100% of what fits
    fit = min(pw / w, ph / h)
    scale = fit * np.sqrt(rng.uniform(0.35, 1.0))
    cw, ch = w * scale, h * scale
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    img = photo.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # colour jitter: per-channel gain and a shared gamma, as one lookup table
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, 3)
    gamma = rng.uniform(0.8, 1.25)
    levels = (np.arange(256) / 255.0) ** gamma * 255
    lut = np.concatenate([np.clip(levels * g, 0, 255) for g in gain]).astype(np.uint8)
    img = img.point(lut.tolist())
    noise = _noise(size)
    ox, oy = int(rng.integers(w)), int(rng.integers(h))
    arr = np.asarray(img, dtype=np.int16) + noise[oy : oy + h, ox : ox + w]
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _frame_job(job) -> bytes:
    return photo_frame(*job)


def write_statefarm_archive(path: Path, images: int, size: tuple[int, int] = (640, 480), seed: int = 0,
                            test_share: float = 0.25, drivers: int = 26, quality: int = 90,
                            workers: int | None = None) -> dict:
    """Write `path`: `images` photo-like frames of `size` (width, height) in Kaggle's State Farm layout,
    `test_share` of them test frames, the train frames spread over `drivers` drivers and the 10 classes.
    Frames are made by `workers` processes (default: one per core). Returns counts and the mean JPEG size."""
    n_test = max(1, round(images * test_share))
    n_train = max(10, images - n_test)
    total = n_train + n_test
    rng = np.random.default_rng(seed)
    numbers = rng.choice(max(100_000, 10 * total), size=total, replace=False) + 1  # unique, shuffled names
    subjects = [f"p{2 + 3 * i:03d}" for i in range(drivers)]
    jobs = [((seed, i), tuple(size), quality) for i in range(total)]
    _photos()  # loaded once here, inherited by the forked workers
    rows, test_names, nbytes = [], [], 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf, Pool(workers or len(os.sched_getaffinity(0))) as pool:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)

        for i, data in enumerate(pool.imap(_frame_job, jobs, chunksize=16)):
            name = f"img_{numbers[i]}.jpg"
            nbytes += len(data)
            if i < n_train:
                label = CLASSES[i % 10]
                rows.append((subjects[(i // 10) % drivers], label, name))
                add(f"imgs/train/{label}/{name}", data)
            else:
                test_names.append(name)
                add(f"imgs/test/{name}", data)
        listing = pd.DataFrame(rows, columns=["subject", "classname", "img"])
        sample = pd.DataFrame({"img": sorted(test_names), **{c: 0.1 for c in CLASSES}})
        add("driver_imgs_list.csv", listing.to_csv(index=False).encode())
        add("sample_submission.csv", sample.to_csv(index=False).encode())
    return {"train": n_train, "test": n_test, "mean_jpeg_bytes": nbytes / total, "zip_bytes": path.stat().st_size}


@contextlib.contextmanager
def work_dir(keep: Path | None, prefix: str):
    """A benchmark's working folder: `keep` (created, left in place) or a temporary one removed afterwards."""
    work = keep or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _update(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied key by key into nested mappings."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _update(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def statefarm_params(source: Path, changes: dict | None = None) -> dict:
    """The raw params mapping for State Farm alone, read from this repository's params.yaml (the shipped values of
    every key, top-level ones included), with data from `source`, one model `main`, on the CPU, and `changes`
    (nested, like params.yaml's `statefarm` section) applied. Parse it with `pipeline.core.config.parse_params`."""
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    top = {key: value for key, value in shipped.items() if key not in shipped["competitions"]}
    section = _update(shipped["statefarm"], {"data": {"source": str(source)}, "models": {"main": {}}})
    return {**top, "competitions": ["statefarm"], "device": "cpu", "models": ["main"],
            "statefarm": _update(section, changes or {})}
