"""What the per-fold stages (head, finetune) share: the fold's rows, and how their outputs are written and read.

A fold's folder holds `oof.csv` (its validation rows: id, true label, one probability column per class),
`test.npy` (test probabilities in the cache's order), the weights, and `params.json` (the resolved params,
seed and learning curve that produced them). Every fold trains for its fixed number of epochs: nothing is
chosen on the validation rows whose predictions `oof.csv` holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.competitions import Competition
from pipeline.core.io import read_json, write_csv, write_json
from pipeline.core.paths import Paths
from pipeline.data.cache import encode_labels, load_cache, load_folds
from pipeline.scoring.metrics import scores


@dataclass(frozen=True)
class FoldSplit:
    """The train and validation rows of one fold, in the cache's row order."""

    ids: np.ndarray
    labels: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray


def train_rows(paths: Paths, comp: Competition) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cached train row's id, encoded label and fold, in the cache's order."""
    _, index = load_cache(paths.cache, "train")
    return index["id"].to_numpy(), encode_labels(index["label"], comp.classes), load_folds(paths.folds, index, paths.cache)


def fold_split(paths: Paths, comp: Competition, fold: int, subsample: float = 1.0, seed: int = 0) -> FoldSplit:
    """Fold `fold`'s rows: its validation rows all, and its training rows, or with `subsample` < 1 that share of
    them drawn per class (seeded by `seed` and the fold, so every model and stage of a run learns from the same
    images; at least two per class present)."""
    ids, labels, folds = train_rows(paths, comp)
    train = np.flatnonzero(folds != fold)
    if subsample < 1.0:
        rng = np.random.default_rng([seed, fold])
        train = np.sort(np.concatenate([
            rng.choice(rows, size=min(len(rows), max(2, round(subsample * len(rows)))), replace=False)
            for c in np.unique(labels[train]) for rows in [train[labels[train] == c]]]))
    return FoldSplit(ids, labels, train, np.flatnonzero(folds == fold))


def save_fold(
    out: Path, metrics_path: Path, comp: Competition, split: FoldSplit, oof: np.ndarray, test: np.ndarray, info: dict
) -> dict:
    """Write a fold's predictions, provenance and metrics; return the metrics."""
    val_labels = split.labels[split.val_rows]
    oof_df = pd.DataFrame(oof, columns=list(comp.classes))
    oof_df.insert(0, "label", np.asarray(comp.classes)[val_labels])
    oof_df.insert(0, "id", split.ids[split.val_rows])
    write_csv(out / "oof.csv", oof_df)
    np.save(out / "test.npy", test.astype(np.float32))
    last = info["history"][-1]
    metrics = {**scores(oof, val_labels), "epochs": last["epoch"], "train_loss": last.get("train_loss"),
               "val_rows": int(len(val_labels)), "train_rows": int(len(split.train_rows))}
    write_json(out / "params.json", info)
    write_json(metrics_path, metrics)
    return metrics


def fold_summary(metrics: dict) -> str:
    """What a per-fold stage prints: the fold's out-of-fold score at the epoch it kept (its last)."""
    return (f"val log loss {metrics['logloss']:.4f}, accuracy {metrics['accuracy']:.4f} on {metrics['val_rows']} "
            f"rows, after epoch {metrics['epochs']} (the last, kept)")


def fold_outputs(stage: str):
    """What a per-fold stage writes, for its closing message."""
    return lambda comp, model, fold: (Paths(comp, model=model).fold_model(stage, fold),
                                      Paths(comp, model=model).fold_metrics(stage, fold),
                                      Paths(comp, model=model).live(stage, fold))


def load_oof(comp: Competition, dirs: list[Path], ids: np.ndarray) -> np.ndarray:
    """Stitch the folds' out-of-fold predictions into one (N, C) array in the order of `ids`."""
    frames = pd.concat([pd.read_csv(d / "oof.csv", dtype={"id": str, "label": str}, keep_default_na=False)
                        for d in dirs]).set_index("id")  # an id spelt NA stays the id "NA"
    missing = set(ids) - set(frames.index)
    if missing or frames.index.duplicated().any():
        raise ValueError(
            f"out-of-fold predictions in {', '.join(map(str, dirs))} do not cover every train image exactly "
            f"once ({len(missing)} missing); re-run the per-fold stages for every fold in params.yaml."
        )
    return frames.loc[ids, list(comp.classes)].to_numpy(dtype=np.float64)


def load_test(dirs: list[Path]) -> np.ndarray:
    """The folds' test predictions, stacked: (folds, M, C)."""
    return np.stack([np.load(d / "test.npy").astype(np.float64) for d in dirs])


def environments(paths: Paths, models, folds, stages=("head", "finetune")) -> list[dict]:
    """Every distinct machine the members were computed on (their features, heads and finetuned networks), as the
    stages recorded it: a run's scores are that machine's."""
    found = []
    for model in models:
        files = [paths.of(model).features / "meta.json"]
        files += [paths.of(model).fold_model(stage, k) / "params.json" for stage in stages for k in folds]
        for env in (read_json(f).get("environment") for f in files if f.is_file()):
            if env and env not in found:
                found.append(env)
    return found

