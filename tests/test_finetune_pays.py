"""What keeps finetuning and the ensemble paying on small data (issue 17): a fold too small for its epochs trains
for `finetune.min_steps` steps, and the ensemble takes a fitted calibration or weights only when they beat the
simpler choice by more than noise."""

import shutil

import numpy as np
from scipy.special import softmax

from conftest import tiny_params
from pipeline.scoring import choosing
from pipeline.stages import finetune
from pipeline.core.sections import FinetuneParams
from pipeline.core.io import read_json
from pipeline.data.outputs import fold_split
from pipeline.core.competitions import get_competition
from pipeline.core.paths import Paths
from test_honest_scores import COMP, copy_upstream


def test_planned_epochs_reach_min_steps_only_where_epochs_fall_short():
    ft = FinetuneParams(epochs=3, min_steps=30)
    assert finetune.planned_epochs(ft, 3) == 10  # 112 images in batches of 32: 3 steps an epoch
    assert finetune.planned_epochs(ft, 7) == 5  # rounded up: at least 30 steps
    assert finetune.planned_epochs(ft, 600) == 3  # a full-size fold keeps its epochs
    assert finetune.planned_epochs(FinetuneParams(epochs=3, min_steps=0), 3) == 3
    assert finetune.planned_epochs(ft, 3, subsample=0.5) == 5  # quick mode: half the images, half the floor


def test_a_small_fold_trains_for_min_steps(pipeline_run, tmp_path, monkeypatch):
    """The stage itself: its learning curve has as many epochs as min_steps asks for, on the fixed schedule."""
    root, _, _ = pipeline_run
    params = tiny_params(**{f"{COMP}.finetune.epochs": 1, f"{COMP}.finetune.min_steps": 7})
    paths = copy_upstream(root, tmp_path)
    shutil.copytree(Paths(COMP, root).fold_model("head", 1), paths.fold_model("head", 1))
    monkeypatch.chdir(tmp_path)
    finetune.run(params, COMP, "main", 1, tmp_path)
    train_rows = len(fold_split(paths, get_competition(COMP), 1).train_rows)
    steps = train_rows // 8  # batch_size 8, the last short batch dropped
    history = read_json(paths.fold_model("finetune", 1) / "params.json")["history"]
    assert history[-1]["epoch"] == -(-7 // steps) > 1


def _row_losses(rng, n, gap, noise):
    """Two candidates' row losses: the fitted one lower by `gap` on average, with `noise` per row."""
    simple, jitter = rng.exponential(0.3, size=n), rng.normal(0, noise, n)
    return {("finetune", "none"): simple, ("finetune", "temperature"): simple - gap + jitter - jitter.mean()}


def test_a_gain_within_noise_keeps_the_simpler_choice():
    rng = np.random.default_rng(0)
    rows = np.arange(100)  # independent rows: each its own unit
    assert choosing.simplest_within_noise(_row_losses(rng, 100, 0.01, 0.3), rows) == ("finetune", "none")
    # the same gain measured on enough rows is real
    many = np.arange(100_000)
    assert choosing.simplest_within_noise(_row_losses(rng, 100_000, 0.01, 0.3), many) == ("finetune", "temperature")
    # a member that diverged (NaN row losses) is passed over, not a crash or a choice
    losses = {("head", "none"): np.full(100, np.nan), **_row_losses(rng, 100, 0.01, 0.3)}
    assert choosing.simplest_within_noise(losses, rows) == ("finetune", "none")


def test_averaging_in_the_heads_must_beat_noise_too():
    """The real-photo check, seed 1: one hard fold made `both` win the other folds' mean by chance and cost the
    folds where the finetuned networks alone were better. Both kinds fit nothing, yet adding the heads is a
    departure from the recipe's product that must beat noise, as a fitted calibration must."""
    rng = np.random.default_rng(2)
    small = {("both" if k == ("finetune", "temperature") else "finetune", "none"): v
             for k, v in _row_losses(rng, 100, 0.01, 0.3).items()}
    assert choosing.simplest_within_noise(small, np.arange(100)) == ("finetune", "none")
    large = {("both" if k == ("finetune", "temperature") else "finetune", "none"): v
             for k, v in _row_losses(rng, 100_000, 0.01, 0.3).items()}
    assert choosing.simplest_within_noise(large, np.arange(100_000)) == ("both", "none")


def test_a_real_miscalibration_is_still_fixed():
    """Members twice too confident, on 1,000 rows: the temperature's gain is far beyond noise."""
    rng = np.random.default_rng(1)
    labels = rng.integers(4, size=1000)
    logits = rng.normal(size=(1000, 4)) + 1.5 * np.eye(4)[labels]
    p = softmax(3 * logits, axis=1)  # the Bayes posterior is softmax(1.5 * logits): twice too confident
    choice = choosing.choose({"a/head": p, "a/finetune": p}, labels, np.arange(1000) % 5, choosing.KINDS,
                             ("none", "temperature"))
    assert choice.method == "temperature" and choice.value > 1.5, choice.value


def _clustered(rng, drivers=8, per_driver=50, classes=4):
    """State Farm-like rows: each driver's frames look alike, so the members are far too confident on half the
    drivers and too little on the others, driver by driver, not row by row: one temperature helps the first
    half a lot and costs the others."""
    labels = rng.integers(classes, size=drivers * per_driver)
    group = np.repeat(np.arange(drivers), per_driver)
    sharp = np.where(rng.permutation(drivers) % 2 == 0, 2.5, 0.4)[group]
    logits = rng.normal(size=(len(labels), classes)) + 1.2 * np.eye(classes)[labels]
    return softmax(sharp[:, None] * logits, axis=1), labels, group


def test_a_gain_counted_over_drivers_not_rows():
    """A temperature that wins by a row-level standard error (400 rows as if independent) but not by the
    driver-level one (8 drivers): the rows of a driver move together, so the choice stays uncalibrated. The old
    rule, rows as units, took the temperature."""
    rng = np.random.default_rng(0)
    p, labels, group = _clustered(rng)
    losses = {("finetune", "none"): choosing.row_losses(p, labels)}
    t = choosing.fit_calibration("temperature", p, labels)
    losses["finetune", "temperature"] = choosing.row_losses(choosing.calibrate("temperature", t, p), labels)
    rows = np.arange(len(labels))
    assert choosing.simplest_within_noise(losses, rows) == ("finetune", "temperature")  # rows: "beyond noise"
    assert choosing.simplest_within_noise(losses, group) == ("finetune", "none")


def test_the_cross_fitted_choice_takes_its_units_from_the_groups(monkeypatch):
    """Each fold's choice weighs the other folds' drivers as its units (the folds only where there are no
    groups)."""
    rng = np.random.default_rng(0)
    p, labels, group = _clustered(rng)
    folds = group // 2
    seen, rule = [], choosing.simplest_within_noise
    monkeypatch.setattr(choosing, "simplest_within_noise", lambda losses, units: seen.append(units) or rule(losses, units))
    comp = get_competition("statefarm")
    choosing.cross_fitted(comp, {"a/head": p, "a/finetune": p}, labels, folds, ("finetune",), ("none", "temperature"),
                          group)
    assert [sorted(set(u)) for u in seen] == [sorted(set(group[folds != k])) for k in range(4)]
    seen.clear()
    choosing.cross_fitted(comp, {"a/head": p, "a/finetune": p}, labels, folds, ("finetune",), ("none", "temperature"))
    assert [sorted(set(u)) for u in seen] == [sorted(set(folds[folds != k])) for k in range(4)]


def test_a_calibration_is_not_fitted_on_near_perfect_folds():
    """Other folds with almost no misclassified rows tell nothing about over-confidence (sharper is always
    better on rows one gets right): no temperature is fitted there, however consistently it wins on them."""
    rng = np.random.default_rng(5)
    n = 200
    labels = rng.integers(2, size=n)
    margin = rng.uniform(1.0, 3.0, n)
    p_right = 1 / (1 + np.exp(-margin))  # right on every row, under-confident: a sharper temperature wins everywhere
    p = np.where(labels[:, None] == np.arange(2), p_right[:, None], 1 - p_right[:, None])
    oof = {"a/head": p, "a/finetune": p}
    folds = np.arange(n) % 4
    assert not choosing.enough_errors("finetune", "temperature", oof, labels)
    choice = choosing.choose(oof, labels, folds, ("finetune",), ("none", "temperature"), None)
    assert choice.method == "none"
    wrong = labels.copy()
    wrong[:30] = 1 - wrong[:30]  # 30 misses: enough to fit a temperature (and a weight, and both)
    assert choosing.enough_errors("weighted", "temperature", oof, wrong)
