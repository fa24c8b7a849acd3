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
    assert choosing.simplest_within_noise(_row_losses(rng, 100, 0.01, 0.3)) == ("finetune", "none")
    # the same gain measured on enough rows is real
    assert choosing.simplest_within_noise(_row_losses(rng, 100_000, 0.01, 0.3)) == ("finetune", "temperature")
    # a member that diverged (NaN row losses) is passed over, not a crash or a choice
    losses = {("head", "none"): np.full(100, np.nan), **_row_losses(rng, 100, 0.01, 0.3)}
    assert choosing.simplest_within_noise(losses) == ("finetune", "none")


def test_averaging_in_the_heads_must_beat_noise_too():
    """The real-photo check, seed 1: one hard fold made `both` win the other folds' mean by chance and cost the
    folds where the finetuned networks alone were better. Both kinds fit nothing, yet adding the heads is a
    departure from the recipe's product that must beat noise, as a fitted calibration must."""
    rng = np.random.default_rng(2)
    small = {("both" if k == ("finetune", "temperature") else "finetune", "none"): v
             for k, v in _row_losses(rng, 100, 0.01, 0.3).items()}
    assert choosing.simplest_within_noise(small) == ("finetune", "none")
    large = {("both" if k == ("finetune", "temperature") else "finetune", "none"): v
             for k, v in _row_losses(rng, 100_000, 0.01, 0.3).items()}
    assert choosing.simplest_within_noise(large) == ("both", "none")


def test_a_real_miscalibration_is_still_fixed():
    """Members twice too confident, on 1,000 rows: the temperature's gain is far beyond noise."""
    rng = np.random.default_rng(1)
    labels = rng.integers(4, size=1000)
    logits = rng.normal(size=(1000, 4)) + 1.5 * np.eye(4)[labels]
    p = softmax(3 * logits, axis=1)  # the Bayes posterior is softmax(1.5 * logits): twice too confident
    choice = choosing.choose({"a/head": p, "a/finetune": p}, labels, np.arange(1000) % 5, choosing.KINDS,
                             ("none", "temperature"))
    assert choice.method == "temperature" and choice.value > 1.5, choice.value
