"""Fold scores that cannot flatter: a fold's out-of-fold predictions do not depend on that fold's labels, the
ensemble chooses nothing on the rows it reports, and the same params on the same CPU give the same outputs,
whatever the number of DataLoader workers."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_params
from pipeline.scoring import calibration, choosing
from pipeline.stages import ensemble, finetune, head
from pipeline.core.competitions import get_competition
from pipeline.scoring.metrics import scores
from pipeline.core.paths import Paths

COMP = "statefarm"


def copy_upstream(src_root, dst_root, comp_name=COMP):
    """The outputs a per-fold stage reads (cache, features, folds), copied to a fresh root."""
    src, dst = Paths(comp_name, src_root), Paths(comp_name, dst_root)
    for folder in (src.raw, src.cache, src.features):
        shutil.copytree(folder, dst_root / folder.relative_to(src_root))
    dst.folds.parent.mkdir(parents=True)
    shutil.copy(src.folds, dst.folds)
    return dst


def probabilities(path, comp_name=COMP) -> np.ndarray:
    return pd.read_csv(path / "oof.csv")[list(get_competition(comp_name).classes)].to_numpy()


def permute_fold_labels(paths: Paths, fold: int, seed: int = 0) -> None:
    """Shuffle the labels of fold `fold`'s rows among themselves, in the cache index and the folds file."""
    folds = pd.read_csv(paths.folds, dtype=str)
    cache = pd.read_csv(paths.cache / "train.csv", dtype=str)
    rows = np.flatnonzero(folds["fold"].astype(int) == fold)
    shuffled = np.roll(cache.loc[rows, "label"].to_numpy(), len(rows) // 2 + seed)
    assert (shuffled != cache.loc[rows, "label"].to_numpy()).mean() > 0.5
    cache.loc[rows, "label"] = shuffled
    folds.loc[rows, "label"] = shuffled
    cache.to_csv(paths.cache / "train.csv", index=False)
    folds.to_csv(paths.folds, index=False)


def test_a_folds_predictions_do_not_move_when_its_labels_do(pipeline_run, tmp_path, monkeypatch):
    """Permuting fold 0's validation labels changes neither the head's nor the finetuned model's predictions for
    fold 0: no epoch, checkpoint or anything else is chosen on them."""
    root, params, _ = pipeline_run
    paths = copy_upstream(root, tmp_path)
    permute_fold_labels(paths, 0)
    monkeypatch.chdir(tmp_path)
    head.run(params, COMP, "main", 0, tmp_path)
    finetune.run(params, COMP, "main", 0, tmp_path)
    original = Paths(COMP, root)
    for stage in ("head", "finetune"):
        np.testing.assert_allclose(probabilities(paths.fold_model(stage, 0)), probabilities(original.fold_model(stage, 0)),
                                   rtol=0, atol=1e-6, err_msg=stage)
        assert (pd.read_csv(paths.fold_model(stage, 0) / "oof.csv")["label"]
                != pd.read_csv(original.fold_model(stage, 0) / "oof.csv")["label"]).any()


def test_finetune_does_not_depend_on_the_number_of_workers(pipeline_run, tmp_path, monkeypatch):
    """Augmentation seeds are drawn per sample in the main process: two workers give the very same run as none
    (albumentations' own state would have given each worker the same augmentations)."""
    root, _, _ = pipeline_run
    params = tiny_params(**{f"{COMP}.speed.finetune_workers": 2})
    paths = copy_upstream(root, tmp_path)
    shutil.copytree(Paths(COMP, root).fold_model("head", 1), paths.fold_model("head", 1))
    monkeypatch.chdir(tmp_path)
    finetune.run(params, COMP, "main", 1, tmp_path)
    np.testing.assert_allclose(probabilities(paths.fold_model("finetune", 1)),
                               probabilities(Paths(COMP, root).fold_model("finetune", 1)), rtol=0, atol=1e-6)


def _members(rng, labels, c):
    """Two models' heads and finetuned networks: informative, each in its own way and calibration."""
    logits = rng.normal(size=(len(labels), c)) + 2.5 * np.eye(c)[labels]
    return {"a/head": calibration.with_temperature(np.exp(logits), 0.5),
            "a/finetune": calibration.with_temperature(np.exp(logits + rng.normal(size=logits.shape)), 2.0),
            "b/head": calibration.with_temperature(np.exp(logits + 2 * rng.normal(size=logits.shape)), 1.0),
            "b/finetune": calibration.with_temperature(np.exp(rng.normal(size=logits.shape)), 1.0)}  # noise


@pytest.mark.parametrize("changes", [
    {},  # shipped: the kind of members and the calibration chosen per fold
    {"members": "weighted", "calibration": "clip"},  # weights and a clip fitted
    {"members": "both", "calibration": "temperature", "neighbours": 2},  # a temperature, neighbour smoothing
])
def test_the_reported_rows_of_a_fold_do_not_move_when_its_labels_do(pipeline_run, tmp_path, changes):
    """End to end through the stage that reports, from its files: fold 1's labels permuted in the ensemble's
    inputs (cache index, folds file, every member's oof.csv) leave fold 1's rows of the reported out-of-fold file
    as they were, whatever the ensemble fits."""
    src, _, _ = pipeline_run
    params = tiny_params(**{f"{COMP}.ensemble.{key}": value for key, value in changes.items()})
    reported = {}
    for name in ("as_is", "moved"):
        root = tmp_path / name
        for folder in (Path("data") / COMP, Path("folds"), Path("models") / COMP):
            shutil.copytree(src / folder, root / folder)
        paths = Paths(COMP, root)
        if name == "moved":
            permute_fold_labels(paths, 1)
            for oof_file in (root / "models" / COMP).glob("*/*/fold*/oof.csv"):
                oof = pd.read_csv(oof_file, dtype={"id": str})
                oof["label"] = oof["id"].map(pd.read_csv(paths.folds, dtype=str).set_index("id")["label"])
                oof.to_csv(oof_file, index=False)
        ensemble.run(params, COMP, root)
        reported[name] = pd.read_csv(paths.oof, dtype={"id": str})
    as_is, moved = reported["as_is"], reported["moved"]
    fold1 = as_is["fold"] == 1
    assert (as_is.loc[fold1, "label"] != moved.loc[fold1, "label"]).any(), "the labels did move"
    classes = list(get_competition(COMP).classes)
    np.testing.assert_allclose(moved.loc[fold1, classes], as_is.loc[fold1, classes], rtol=0, atol=1e-9)
    if changes.get("calibration") == "temperature":
        assert not np.allclose(moved.loc[~fold1, classes], as_is.loc[~fold1, classes]), \
            "other folds' fits saw fold 1's labels"


@pytest.mark.parametrize("kinds", [choosing.KINDS, ("weighted",)])
def test_ensemble_chooses_and_fits_its_weights_without_the_rows_it_scores(kinds):
    """A fold whose labels change keeps its cross-fitted predictions: the kind, the members' weights and the
    calibration were chosen and fitted elsewhere."""
    rng = np.random.default_rng(0)
    n, c = 300, 3
    labels = rng.integers(c, size=n)
    folds = np.arange(n) % 5
    oof = _members(rng, labels, c)
    methods = ("none", "temperature", "clip")
    comp = get_competition("statefarm")
    base, _ = choosing.cross_fitted(comp, oof, labels, folds, kinds, methods)
    moved = labels.copy()
    moved[folds == 2] = rng.permutation(moved[folds == 2])
    again, _ = choosing.cross_fitted(comp, oof, moved, folds, kinds, methods)
    np.testing.assert_array_equal(base[folds == 2], again[folds == 2])
    assert not np.array_equal(base[folds != 2], again[folds != 2]), "other folds' fits did see fold 2's labels"


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_a_folds_threshold_is_fitted_without_its_labels(metric):
    """A binary competition scored on labels: each fold's labels are decided by a threshold fitted on the other
    folds, so they do not move when that fold's labels do; and the fitted threshold beats 0.5 where the
    members' probabilities are biased."""
    comp = dataclasses.replace(get_competition("dogscats"), submission="label", metric=metric)
    rng = np.random.default_rng(3)
    n = 400
    labels = rng.integers(2, size=n)
    folds = np.arange(n) % 5
    p_dog = np.clip(0.15 + 0.4 * labels + rng.normal(0, 0.12, n), 0.01, 0.99)  # biased low: 0.5 is a bad cut
    oof = {"m/head": np.stack([1 - p_dog, p_dog], axis=1)}
    honest, choices = choosing.cross_fitted(comp, oof, labels, folds, ("head",), ("none",))
    moved = labels.copy()
    moved[folds == 2] = 1 - moved[folds == 2]
    _, again = choosing.cross_fitted(comp, oof, moved, folds, ("head",), ("none",))
    assert choices["2"].threshold == again["2"].threshold
    assert any(choices[k].threshold != again[k].threshold for k in ("0", "1", "3", "4")), "fold 2's labels unseen"
    from pipeline.scoring.metrics import metric as score
    from pipeline.scoring.submission import decide
    fitted = np.concatenate([decide(honest[folds == k], choices[str(k)].threshold) for k in range(5)])
    order = np.concatenate([np.flatnonzero(folds == k) for k in range(5)])
    assert score(metric, honest[order], labels[order], fitted) > score(metric, honest, labels) + 0.05  # vs 0.5
    assert all(0.25 < c.threshold < 0.45 for c in choices.values())


def test_fitted_weights_are_a_convex_combination_that_drops_a_useless_member():
    rng = np.random.default_rng(1)
    labels = rng.integers(4, size=400)
    oof = _members(rng, labels, 4)
    weights = choosing.fit_weights(oof, labels)
    w = np.array(list(weights.values()))
    assert (w >= 0).all() and w.sum() == pytest.approx(1)
    assert weights["b/finetune"] < 0.05, weights  # pure noise earns (almost) nothing
    fitted = choosing.log_combine(oof, weights)
    for member in oof:  # no single member beats the fitted combination on the rows it was fitted on
        assert scores(fitted, labels)["logloss"] <= scores(oof[member], labels)["logloss"] + 1e-9


def test_choosing_the_kind_by_inner_cross_validation_does_not_favour_fitting():
    """With members that are copies of one another, fitted weights can add nothing: the choice among kinds is made
    on held-out folds, where a fitted combination gains nothing over an equal one, so 'weighted' is not picked
    merely for fitting the rows it is scored on."""
    rng = np.random.default_rng(2)
    labels = rng.integers(3, size=300)
    p = _members(rng, labels, 3)["a/head"]
    oof = {"a/head": p, "a/finetune": p.copy()}
    choice = choosing.choose(oof, labels, np.arange(300) % 5, choosing.KINDS, ("none",))
    assert sum(choice.weights.values()) == pytest.approx(1)
    np.testing.assert_allclose(choice.apply(oof), p, atol=1e-6)


def test_log_average_keeps_the_confidence_of_agreeing_models():
    p = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    assert np.allclose(choosing.log_average([p, p, p]), p)
    q = choosing.log_average([p, p[:, ::-1]])
    assert np.allclose(q.sum(axis=1), 1) and q[0, 0] < 0.9


def test_same_params_same_cpu_same_outputs(pipeline_run, tmp_path, monkeypatch):
    """The whole tiny pipeline again, from the archive: byte-identical folds and features, identical predictions
    and submission."""
    from pipeline.stages.inprocess import run_competition

    root, params, _ = pipeline_run
    comp = "dogscats"
    run_competition(params, comp, tmp_path)
    a, b = Paths(comp, root), Paths(comp, tmp_path)
    assert a.folds.read_bytes() == b.folds.read_bytes()
    for name in ("train.npy", "test.npy", "train_aug.npy"):
        assert (a.features / name).read_bytes() == (b.features / name).read_bytes(), name
    for model in params.models:
        for k in params.folds:
            np.testing.assert_allclose(probabilities(b.of(model).fold_model("finetune", k), comp),
                                       probabilities(a.of(model).fold_model("finetune", k), comp), rtol=0, atol=1e-6)
    assert a.submission.read_text() == b.submission.read_text()


def test_the_seed_changes_state_farms_folds(tmp_path):
    """Three demo drivers in three folds: 6 possible assignments, so five seeds must give several of them."""
    from pipeline.stages import download, folds

    download.run(tiny_params(), COMP, tmp_path)
    seen = {tuple(pd.read_csv(folds.run(tiny_params(seed=seed), COMP, tmp_path))["fold"]) for seed in range(5)}
    assert len(seen) >= 3


def test_log_loss_is_kaggles_row_mean_and_matches_scikit_learn():
    """Rows that do not sum to 1 are rescaled, zeros are clipped at 1e-15: the per-row losses the ensemble's noise
    rule pairs average to the score every stage reports, which is scikit-learn's on the rescaled rows."""
    from sklearn.metrics import log_loss

    from pipeline.scoring.metrics import row_losses

    rng = np.random.default_rng(3)
    probs = rng.random((50, 4)) * 3
    probs[0] = [0.0, 1.0, 0.0, 0.0]  # a confident miss: clipped, not infinite
    labels = rng.integers(4, size=50)
    labels[0] = 0
    rows = row_losses(probs, labels)
    assert rows[0] == pytest.approx(-np.log(1e-15), rel=1e-6)
    clipped = np.clip(probs / probs.sum(1, keepdims=True), 1e-15, 1 - 1e-15)
    reference = log_loss(labels, clipped / clipped.sum(1, keepdims=True), labels=range(4))
    assert scores(probs, labels)["logloss"] == pytest.approx(reference, rel=1e-12) == rows.mean()
