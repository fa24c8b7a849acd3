"""Reading what prepare and folds wrote: the decoded image cache, its labels and the folds (numpy and pandas
only, so the stages that need no network, such as the ensemble, import no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import OutputError
from pipeline.core.io import NpyReader


def load_cache(cache: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The memory-mapped uint8 images of `split` and their index (same row order)."""
    try:
        images = np.load(cache / f"{split}.npy", mmap_mode="r")
        index = pd.read_csv(cache / f"{split}.csv", dtype={"id": str, "label": str, "group": str},
                            keep_default_na=False)
    except (OSError, ValueError) as e:
        raise OutputError(f"the image cache {cache} cannot be read ({e}); re-run `dvc repro prepare@<comp>`.") from None
    if len(images) != len(index):
        raise OutputError(f"{cache}: {split}.npy has {len(images)} rows but {split}.csv {len(index)}; "
                          "re-run `dvc repro prepare@<comp>`.")
    return images, index


def image_rows(cache: Path, split: str) -> NpyReader:
    """The images of `split`, a row per index, read with plain reads (for DataLoaders: see `NpyReader`)."""
    load_cache(cache, split)  # the checks
    return NpyReader(cache / f"{split}.npy")


def load_folds(path: Path, train_index: pd.DataFrame, cache: Path | None = None) -> np.ndarray:
    """Each cached train row's fold, checked to be in the cache's row order. The folds list every train image;
    the ones prepare dropped as unreadable (its `skipped.csv` in `cache`) are left out, and only those."""
    folds = pd.read_csv(path, dtype={"id": str, "label": str, "group": str}, keep_default_na=False)
    skipped = cache / "skipped.csv" if cache is not None else None
    if skipped is not None and skipped.is_file():
        listed = pd.read_csv(skipped, dtype={"id": str}, keep_default_na=False)
        dropped = set(listed.loc[(listed["split"] == "train") & (listed["kept"] == "dropped"), "id"])
        folds = folds[~folds["id"].isin(dropped)]
    if list(folds["id"]) != list(train_index["id"]):
        raise OutputError(f"{path} does not list the cached train images in order; re-run `dvc repro`.")
    return folds["fold"].to_numpy()


def encode_labels(labels: pd.Series, classes: tuple[str, ...]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return labels.map(lookup).to_numpy()
