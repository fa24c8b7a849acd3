"""Stage `folds@<comp>`: `data/<comp>/raw/train.csv` -> `folds/<comp>.csv`.

One row per train image (in the index's order) with its `fold`. Competitions whose test set holds unseen
groups (State Farm: unseen drivers) are split with GroupKFold over shuffled groups, so no group is on both sides
of a split (StratifiedGroupKFold was not used: it sorts groups by their class spread and ignores the seed for
most seeds; State Farm's drivers each show every class anyway); the others with StratifiedKFold.
Deterministic in `seed`, and a different `seed` gives different folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedKFold

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.io import write_csv
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main


def assign_folds(train: pd.DataFrame, n_splits: int, seed: int, grouped: bool) -> np.ndarray:
    """Fold number of each row: grouped by `group` when `grouped`, else stratified by `label`."""
    counts = train["label"].value_counts()
    if grouped:
        n_groups = train["group"].nunique()
        if n_groups < n_splits:
            raise ConfigError(
                f"{n_groups} groups cannot fill {n_splits} folds without putting a group on both sides; "
                "use fewer folds in params.yaml (fold_count:) or more data."
            )
        splits = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(train, groups=train["group"])
    else:
        if counts.min() < n_splits:
            raise ConfigError(
                f"class {counts.idxmin()!r} has {counts.min()} image(s), fewer than the {n_splits} folds; "
                "use fewer folds in params.yaml (fold_count:) or more data."
            )
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(train, train["label"])
    fold = np.full(len(train), -1, dtype=int)
    for k, (_, val) in enumerate(splits):
        fold[val] = k
    return fold


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root)
    train = pd.read_csv(paths.raw / "train.csv", dtype={"id": str, "label": str, "group": str},
                        keep_default_na=False)
    folds = train[["id", "label", "group"]].copy()
    folds["fold"] = assign_folds(train, params.fold_count, params.seed, grouped=comp.group_column is not None)
    write_csv(paths.folds, folds)
    return paths.folds


def summary(path: Path) -> str:
    folds = pd.read_csv(path, dtype={"group": str})
    sizes = folds.groupby("fold").agg(rows=("id", "size"), groups=("group", "nunique"))
    return "rows (groups) per fold: " + ", ".join(f"{k}: {r.rows} ({r.groups})" for k, r in sizes.iterrows())


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=summary, wrote=lambda comp, model, fold: [Paths(comp).folds])


if __name__ == "__main__":
    main()
