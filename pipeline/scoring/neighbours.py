"""Test-neighbour smoothing (`ensemble.neighbours`): each prediction averaged with those of its nearest rows in the
backbone's feature space, as State Farm's winners did with a test driver's video frames. Predictions only are
shared between rows, never labels; out-of-fold rows look only within their own fold."""

from __future__ import annotations

import numpy as np

from pipeline.core.paths import Paths


def pooled(features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(N, C) float32 vectors: pooled features as they are, a cut backbone's (N, C, H, W) maps averaged over space,
    read `chunk` rows at a time from the memory-mapped file. Flattened maps of 80k State Farm test frames would be
    ~10 GB (the brute-force search holds them all); their pooled vectors are 0.4 GB."""
    if features.ndim <= 2:
        return np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    out = np.empty(features.shape[:2], dtype=np.float32)
    for i in range(0, len(features), chunk):
        out[i:i + chunk] = np.asarray(features[i:i + chunk], dtype=np.float32).mean(axis=tuple(range(2, features.ndim)))
    return out


def nearest(features: np.ndarray, k: int) -> np.ndarray | None:
    """Each row's k nearest other rows (cosine, in the backbone's pooled feature space); None with no other row.
    scikit-learn's brute-force search computes the distances a block of rows at a time (its working memory)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(features) - 1)
    if k < 1:
        return None
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    return index.fit(pooled(features)).kneighbors(return_distance=False)  # excludes the row itself


def neighbour_smooth(probs: np.ndarray, features: np.ndarray, k: int, weight: float,
                     neighbours: np.ndarray | None = None) -> np.ndarray:
    """Each row's prediction averaged with those of its k nearest rows: test images are video frames, so a frame's
    neighbours show the same driver doing the same thing (State Farm's winners' biggest gain). Only predictions
    are shared between rows, never labels. `neighbours` reuses a search already made."""
    neighbours = nearest(features, k) if neighbours is None else neighbours
    if neighbours is None:
        return probs
    return (1 - weight) * probs + weight * probs[neighbours].mean(axis=1)


def smooth_members(oof: dict, test: dict, paths: Paths, fold_of: np.ndarray, k: int, weight: float,
                   kept: np.ndarray | None = None) -> None:
    """`ensemble.neighbours` applied to every member: out-of-fold rows find their neighbours among the same fold's
    validation rows (unseen drivers, as the test set's are), test rows among the test rows. `kept`: the train rows
    the members cover (a quick run's folds), in the features' order."""
    train_features = pooled(np.load(paths.features / "train.npy", mmap_mode="r"))  # the first model's
    if kept is not None:
        train_features = train_features[kept]
    folds = {fold: np.flatnonzero(fold_of == fold) for fold in np.unique(fold_of)}
    within = {fold: nearest(train_features[rows], k) for fold, rows in folds.items()}  # searched once per pool
    test_neighbours = nearest(np.load(paths.features / "test.npy", mmap_mode="r"), k)
    for member in list(oof):
        smoothed = oof[member].copy()
        for fold, rows in folds.items():
            smoothed[rows] = neighbour_smooth(oof[member][rows], None, k, weight, within[fold])
        oof[member] = smoothed
        test[member] = neighbour_smooth(test[member], None, k, weight, test_neighbours)
