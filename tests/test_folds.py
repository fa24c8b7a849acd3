"""Splitter properties: no driver on both sides, every row validated exactly once, classes balanced."""

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_params
from pipeline.stages import download, folds
from pipeline.stages.folds import assign_folds


def synthetic(n_groups=12, per_group=20, n_classes=10, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(f"img_{g}_{i}.jpg", f"c{rng.integers(n_classes)}", f"p{g:03d}")
            for g in range(n_groups) for i in range(per_group)]
    return pd.DataFrame(rows, columns=["id", "label", "group"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_splits", [3, 5])
def test_grouped_folds_never_split_a_driver(seed, n_splits):
    train = synthetic(seed=seed)
    fold = assign_folds(train, n_splits, seed, grouped=True)
    assert set(fold) == set(range(n_splits)), "every row lands in exactly one validation fold"
    per_group = pd.Series(fold).groupby(train["group"]).nunique()
    assert (per_group == 1).all(), "no driver on both sides of any split"


def test_grouped_folds_follow_the_seed():
    """Another seed must give other folds (StratifiedGroupKFold ignored the seed for most seeds)."""
    train = synthetic()
    base = assign_folds(train, 5, 0, grouped=True)
    assert np.array_equal(base, assign_folds(train, 5, 0, grouped=True))
    for seed in range(1, 6):
        assert not np.array_equal(base, assign_folds(train, 5, seed, grouped=True)), seed


def test_stratified_folds_balance_classes_and_are_deterministic():
    train = synthetic(n_groups=1, per_group=500, n_classes=2)
    train["group"] = train["id"]
    fold = assign_folds(train, 5, 42, grouped=False)
    shares = pd.crosstab(fold, train["label"], normalize="index")
    overall = train["label"].value_counts(normalize=True)
    assert np.allclose(shares.to_numpy(), overall[shares.columns].to_numpy(), atol=0.02)
    assert np.array_equal(fold, assign_folds(train, 5, 42, grouped=False))
    assert not np.array_equal(fold, assign_folds(train, 5, 43, grouped=False))
    assert np.bincount(fold).min() >= 99


def test_too_few_drivers_is_a_clear_error():
    with pytest.raises(ValueError, match="2 groups cannot fill 5 folds"):
        assign_folds(synthetic(n_groups=2), 5, 0, grouped=True)


def test_too_few_images_of_a_class_is_a_clear_error():
    train = pd.DataFrame({"id": list("abcdefg"), "label": ["cat"] * 6 + ["dog"], "group": list("abcdefg")})
    with pytest.raises(ValueError, match="class 'dog' has 1 image"):
        assign_folds(train, 3, 0, grouped=False)


def test_statefarm_demo_folds_group_by_driver(tmp_path):
    params = tiny_params()
    download.run(params, "statefarm", tmp_path)
    path = folds.run(params, "statefarm", tmp_path)
    df = pd.read_csv(path)
    assert list(df.columns) == ["id", "label", "group", "fold"]
    assert (df.groupby("group")["fold"].nunique() == 1).all()
    assert sorted(df["fold"].unique()) == list(params.folds)
