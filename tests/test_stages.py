"""Every stage's run() on tiny data, both competitions: the files and numbers they produce."""

import numpy as np
import pandas as pd
import pytest

from pipeline.competitions import get_competition
from pipeline.io import read_json
from pipeline.paths import Paths
from pipeline.submission import read_sample, validate_submission

COMPS = ["dogscats", "statefarm"]


@pytest.mark.parametrize("comp_name", COMPS)
def test_features_are_float16_rows_aligned_with_the_cache(pipeline_run, comp_name):
    root, params, _ = pipeline_run
    paths = Paths(comp_name, root)
    n_train = len(pd.read_csv(paths.cache / "train.csv"))
    train = np.load(paths.features / "train.npy")
    aug = np.load(paths.features / "train_aug.npy")
    assert train.dtype == np.float16 and train.shape[0] == n_train
    assert aug.shape == (1, *train.shape)
    assert not np.allclose(aug[0], train), "augmented copies differ from the plain features"
    assert np.load(paths.features / "test.npy").shape[0] == len(pd.read_csv(paths.cache / "test.csv"))
    meta = read_json(paths.features / "meta.json")
    assert meta["features"]["backbone"] == "test_resnet" and len(meta["mean"]) == 3


@pytest.mark.parametrize("comp_name", COMPS)
@pytest.mark.parametrize("stage", ["head", "finetune"])
def test_fold_outputs_cover_exactly_the_validation_rows(pipeline_run, comp_name, stage):
    root, params, results = pipeline_run
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root)
    folds = pd.read_csv(paths.folds, dtype={"id": str})
    n_test = len(pd.read_csv(paths.cache / "test.csv"))
    for k in params.folds:
        out = paths.model(stage, k)
        oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
        assert set(oof["id"]) == set(folds.loc[folds["fold"] == k, "id"])
        probs = oof[list(comp.classes)].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        test = np.load(out / "test.npy")
        assert test.shape == (n_test, comp.num_classes)
        metrics = read_json(paths.fold_metrics(stage, k))
        assert metrics == results[comp_name, stage, k]
        assert 0 <= metrics["accuracy"] <= 1 and metrics["logloss"] > 0
        info = read_json(out / "params.json")
        assert info["fold"] == k and info["seed"] == params.seed and stage in info
        assert (root / "dvclive" / comp_name / stage / f"fold{k}" / "plots" / "metrics" / "val" / "logloss.tsv").exists()


@pytest.mark.parametrize("comp_name", COMPS)
def test_finetune_starts_from_the_trained_head_not_from_random(pipeline_run, comp_name):
    """Epoch 0 of finetuning is the features backbone + the fold's head: same validation loss as the head."""
    root, params, _ = pipeline_run
    paths = Paths(comp_name, root)
    for k in params.folds:
        head = read_json(paths.model("head", k) / "params.json")
        finetune = read_json(paths.model("finetune", k) / "params.json")
        head_best = head["history"][head["best_epoch"]]["logloss"]
        assert finetune["history"][0]["logloss"] == pytest.approx(head_best, rel=2e-3)


@pytest.mark.parametrize("comp_name", COMPS)
def test_submission_has_kaggles_exact_format(pipeline_run, comp_name):
    root, params, results = pipeline_run
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root)
    sub = pd.read_csv(paths.submission, dtype={comp.id_column: str})
    sample = read_sample(comp, paths.raw)
    validate_submission(comp, sub, sample)
    assert list(sub.columns) == list(sample.columns)
    assert list(sub[comp.id_column]) == list(sample[comp.id_column])
    values = sub[list(comp.submission_columns)].to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    if not comp.binary:
        assert np.allclose(values.sum(axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("comp_name", COMPS)
def test_ensemble_metrics_report_cv_and_every_fold(pipeline_run, comp_name):
    root, params, results = pipeline_run
    metrics = read_json(Paths(comp_name, root).metrics)
    assert metrics == results[comp_name, "ensemble"]
    assert metrics["logloss"] > 0 and 0 <= metrics["accuracy"] <= 1
    assert metrics["member"] in ("head", "finetune", "both")
    assert metrics["calibration"] in ("none", "temperature", "clip")
    assert metrics["members_logloss"][metrics["member"]] == min(metrics["members_logloss"].values())
    assert metrics["logloss"] == metrics["calibrations_logloss"][metrics["calibration"]]
    assert set(metrics["folds"]) == {str(k) for k in params.folds}
    for fold in metrics["folds"].values():
        assert {"head_logloss", "head_accuracy", "finetune_logloss", "finetune_accuracy"} <= set(fold)
    assert metrics["demo_test"]["logloss"] > 0 and 0 <= metrics["demo_test"]["accuracy"] <= 1


def test_demo_models_learn_something(pipeline_run):
    """Even two tiny epochs from scratch beat the uniform guess on the demo's pets."""
    _, _, results = pipeline_run
    assert results["dogscats", "ensemble"]["members_logloss"]["finetune"] < np.log(2) + 0.1
