"""The notebook's work on Kaggle: the test folder's images -> `submission.csv`, with the networks, choice and
calibration that `dvc repro` made (`pipeline.kernel.bundle`), through the same code: `pipeline.data.images` decodes,
`pipeline.training.inference` computes each member's fold predictions with its test-time views, and
`pipeline.scoring` averages the folds, applies the ensemble's choice and writes Kaggle's format.

Images are decoded and predicted a chunk at a time, so memory stays flat whatever the hidden test set's size; the
chunks' decoding runs in threads (OpenCV releases the GIL) while the networks use the device.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import ImageError
from pipeline.core.io import write_csv
from pipeline.core.machine import usable_cpus
from pipeline.data.datasets import ImageDataset, build_transform
from pipeline.data.images import decode
from pipeline.kernel.bundle import Bundle
from pipeline.kernel.testset import TestImage, find_test_images
from pipeline.scoring.choosing import Choice, log_average
from pipeline.scoring.submission import FLOAT_FORMAT, make_submission, validate_submission
from pipeline.training.devices import loader_workers, pick_device
from pipeline.training.engine import predict
from pipeline.training.inference import HEAD_BATCH, ArrayRows, FeatureRows, extract, load_head, load_network, load_trunk

# Kaggle runs the notebook with the internet off: no update check of albumentations (it asks PyPI on import), no
# hub look-up of timm's (the weights come from the dataset). The sandbox test fails on any attempt.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHUNK_BYTES = 256 << 20
"""Decoded images held at a time (the networks see them a batch at a time)."""


def _saved(probs: np.ndarray) -> np.ndarray:
    """Float32, as the head and finetune stages save a fold's test predictions (`test.npy`) for the ensemble."""
    return probs.astype(np.float32).astype(np.float64)


class Members:
    """The ensemble's members that carry weight, each as its folds' networks on `device`."""

    def __init__(self, bundle: Bundle, device: torch.device):
        self.bundle, self.device, self.comp = bundle, device, bundle.comp
        weights = bundle.manifest["choice"]["weights"]
        folds = bundle.manifest["folds"]
        self.models = {}
        for name in bundle.manifest["models"]:
            mp, meta = bundle.model(name), bundle.meta(name)
            stages = [s for s in ("head", "finetune") if weights.get(f"{name}/{s}", 0) > 0]
            if not stages:
                continue
            trunk = heads = nets = None
            if "head" in stages:
                trunk = self._ready(load_trunk(mp.features, bundle.weights(name, "backbone"), self.comp.channels),
                                    mp.features.channels_last)
                heads = [load_head(meta["shape"], self.comp.num_classes, mp.head,
                                   bundle.weights(name, "head", k)).to(device).eval() for k in folds]
            if "finetune" in stages:
                nets = [self._ready(load_network(mp, meta["shape"], self.comp.channels, self.comp.num_classes,
                                                 bundle.weights(name, "finetune", k)), mp.finetune.channels_last)
                        for k in folds]
            self.models[name] = (mp, meta, trunk, heads, nets)

    def _ready(self, network, channels_last: bool):
        network = network.to(self.device).eval()
        return network.to(memory_format=torch.channels_last) if channels_last else network

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's test probabilities for `images`, its folds averaged in log space (as the ensemble does)."""
        out, speed, rows = {}, self.bundle.speed, np.arange(len(images))
        for name, (mp, meta, trunk, heads, nets) in self.models.items():
            data = ImageDataset(images, rows, build_transform(size=meta.get("image_size")))
            if heads:  # the features stage's float16 features, then each fold's head
                feats = np.empty((len(images), *meta["shape"]), np.float16)
                extract(trunk, data, ArrayRows(feats), mp.features, speed, self.device, f"{name} features")
                loader = torch.utils.data.DataLoader(FeatureRows([(feats, rows)]), batch_size=HEAD_BATCH)
                out[f"{name}/head"] = log_average([_saved(predict(h, loader, self.device)) for h in heads])
            if nets:
                workers = loader_workers(speed.finetune_workers, self.device)
                loader = torch.utils.data.DataLoader(data, batch_size=mp.finetune.batch_size * 2, num_workers=workers,
                                                     pin_memory=self.device.type == "cuda")
                ft = mp.finetune
                out[f"{name}/finetune"] = log_average([_saved(predict(n, loader, self.device, ft.tta, amp=ft.amp,
                                                                      channels_last=ft.channels_last)) for n in nets])
        return out


def decode_chunk(images: list[TestImage], bundle: Bundle, pool: ThreadPoolExecutor) -> tuple[np.ndarray, list[str]]:
    """The chunk's images decoded as prepare decodes them; unreadable ones stop the notebook with their name, or
    with `prepare.skip_unreadable` stay black (as in prepare's cache) and are returned."""
    prep, comp = bundle.prepare, bundle.comp
    block = np.zeros((len(images), *prep.image_size, comp.channels), np.uint8)
    advice = (f"Kaggle's test set holds an image that cannot be read; set {comp.name}.prepare.skip_unreadable: true "
              "(it then predicts from a black image, as prepare does), run `dvc repro`, and make the notebook again.")

    def one(i: int):
        try:
            decode(images[i].read(), prep.image_size, images[i].where, out=block[i], channels=comp.channels,
                   advice=advice)
        except ImageError:
            if not prep.skip_unreadable:
                raise
            return images[i].where
        return None

    return block, [w for w in pool.map(one, range(len(images))) if w]


def main(bundle_dir: str | Path, competition_dir: str | Path, out: str | Path = "submission.csv") -> dict:
    """Predict every test image under `competition_dir` and write the submission to `out`. Prints the images per
    second and what the hidden test set would take against the record's run-time limit; returns those figures."""
    start = time.perf_counter()
    bundle = Bundle.read(Path(bundle_dir))
    comp = bundle.comp
    sample, images = find_test_images(comp, Path(competition_dir))
    device = pick_device("auto")
    members = Members(bundle, device)
    ready = time.perf_counter()
    row_bytes = int(np.prod(bundle.prepare.image_size)) * comp.channels
    chunk = max(1, CHUNK_BYTES // row_bytes)
    parts: dict[str, list[np.ndarray]] = {}
    skipped: list[str] = []
    with ThreadPoolExecutor(usable_cpus()) as pool:
        for first in range(0, len(images), chunk):
            block, bad = decode_chunk(images[first : first + chunk], bundle, pool)
            skipped += bad
            for member, probs in members.predict(block).items():
                parts.setdefault(member, []).append(probs)
    choice = Choice(**bundle.manifest["choice"])
    final = choice.apply({m: np.concatenate(p) for m, p in parts.items()})
    sub = make_submission(comp, [i.id for i in images], final, choice.threshold)
    validate_submission(comp, sub, sample, str(out))
    write_csv(out, sub, float_format=FLOAT_FORMAT)
    seconds = time.perf_counter() - ready
    rate = len(images) / max(seconds, 1e-9)
    setup = ready - start
    hidden = comp.test_images or len(images)
    estimate = setup + hidden / rate
    limit = comp.notebook_hours * 3600
    few = " (measured on few images: rough)" if len(images) < 200 else ""
    print(f"{comp.name}: {len(images)} test images in {seconds:.1f} s on {device.type}, {rate:.1f} images/s "
          f"(+{setup:.1f} s loading); {hidden} hidden test images would take about {estimate / 60:.1f} min of the "
          f"{comp.notebook_hours:g} h limit{few}" + ("" if estimate <= limit else " -- OVER THE LIMIT: use a GPU, "
                                                    "fewer models or smaller images"))
    if skipped:
        print(f"{len(skipped)} unreadable test image(s) predicted from black images: {', '.join(skipped[:5])}")
    print(f"wrote {out} ({len(sub)} rows)")
    return {"images": len(images), "seconds": seconds, "images_per_second": rate, "setup_seconds": setup,
            "estimate_seconds": estimate, "limit_seconds": limit, "skipped": skipped}
