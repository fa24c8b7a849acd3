"""Every stage's run() on tiny data, both competitions: the files and numbers they produce."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_params
from pipeline.stages import finetune
from pipeline.core.competitions import get_competition
from pipeline.data.cache import encode_labels, load_cache
from pipeline.data.datasets import build_transform
from pipeline.scoring.metrics import scores
from pipeline.core.io import read_json
from pipeline.training.models import create_trunk
from pipeline.core.paths import Paths
from pipeline.scoring.submission import FLOAT_FORMAT, make_submission, read_sample, validate_submission

COMPS = ["dogscats", "statefarm"]


MODELS = ["main", "cut"]  # conftest's: the whole backbone pooled, and one cut at feature level 2


@pytest.mark.parametrize("comp_name", COMPS)
@pytest.mark.parametrize("model", MODELS)
def test_features_are_the_backbones_output_for_each_cached_image_in_order(pipeline_run, comp_name, model):
    """Row i of the features is the saved (cut) backbone's output for cached image i: a shuffled or misaligned row
    (the course's pitfall) fails here, not only a wrong shape."""
    root, params, _ = pipeline_run
    paths = Paths(comp_name, root, model)
    images, index = load_cache(paths.cache, "train")
    train = np.load(paths.features / "train.npy")
    assert train.dtype == np.float16 and train.shape[0] == len(index)
    meta = read_json(paths.features / "meta.json")
    fp = params.model(comp_name, model).features
    assert train.ndim == (2 if fp.cut < 0 else 4) and list(train.shape[1:]) == meta["shape"]
    backbone = create_trunk(fp, pretrained=False)
    backbone.load_state_dict(load_file(paths.features / "backbone.safetensors"))
    rows = [0, len(index) // 2, len(index) - 1]
    x = torch.stack([build_transform()(image=np.array(images[r]))["image"] for r in rows])
    with torch.no_grad():
        expected = backbone.eval()(x).numpy()
    assert np.allclose(train[rows].astype(np.float32), expected, atol=2e-2, rtol=1e-2)
    assert not np.allclose(train[rows[0]], train[rows[1]], atol=2e-2), "distinct images give distinct features"
    assert np.load(paths.features / "test.npy").shape[0] == len(pd.read_csv(paths.cache / "test.csv"))


@pytest.mark.parametrize("comp_name", COMPS)
def test_augmented_feature_copies_differ_from_each_other_and_from_the_plain_ones(pipeline_run, comp_name):
    root, params, _ = pipeline_run
    paths = Paths(comp_name, root)
    train = np.load(paths.features / "train.npy").astype(np.float32)
    aug = np.load(paths.features / "train_aug.npy").astype(np.float32)
    assert aug.shape == (2, *train.shape)
    for a, b in ((aug[0], train), (aug[1], train), (aug[0], aug[1])):
        changed = np.abs(a - b).max(axis=1) > 1e-3
        assert changed.mean() > 0.5, "most rows differ: each copy draws its own augmentations"


@pytest.mark.parametrize("comp_name", COMPS)
@pytest.mark.parametrize("stage", ["head", "finetune"])
@pytest.mark.parametrize("model", MODELS)
def test_fold_outputs_cover_exactly_the_validation_rows(pipeline_run, comp_name, stage, model):
    root, params, results = pipeline_run
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root, model)
    mp = params.model(comp_name, model)
    folds = pd.read_csv(paths.folds, dtype={"id": str})
    n_test = len(pd.read_csv(paths.cache / "test.csv"))
    for k in params.folds:
        out = paths.fold_model(stage, k)
        oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
        assert set(oof["id"]) == set(folds.loc[folds["fold"] == k, "id"])
        probs = oof[list(comp.classes)].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        test = np.load(out / "test.npy")
        assert test.shape == (n_test, comp.num_classes)
        metrics = read_json(paths.fold_metrics(stage, k))
        labels = encode_labels(oof["label"], comp.classes)
        assert metrics["logloss"] == pytest.approx(scores(probs, labels)["logloss"], rel=1e-4)
        assert metrics["accuracy"] == pytest.approx(scores(probs, labels)["accuracy"])
        info = read_json(out / "params.json")
        assert info["fold"] == k and info["seed"] == mp.seed and info["model"] == model and stage in info
        epochs = mp.head.epochs if stage == "head" else mp.finetune.epochs
        assert [h["epoch"] for h in info["history"]] == list(range(epochs + 1)) and metrics["epochs"] == epochs
        if stage == "head" or mp.finetune.tta == ("identity",):  # TTA views change scores
            assert info["history"][-1]["logloss"] == pytest.approx(metrics["logloss"], rel=1e-3), "the last epoch"
        assert (paths.live(stage, k) / "plots" / "metrics" / "val" / "logloss.tsv").exists()


@pytest.mark.parametrize("comp_name", COMPS)
@pytest.mark.parametrize("model", MODELS)
def test_finetune_starts_from_the_trained_head_not_from_random(pipeline_run, comp_name, model):
    """Finetuning starts from the features (cut) backbone + the fold's final head, tensor for tensor, so its
    epoch 0 has the head's last validation loss."""
    root, params, _ = pipeline_run
    paths = Paths(comp_name, root, model)
    for k in params.folds:
        start = finetune.load_start(params, comp_name, model, k, paths).state_dict()
        saved = {**{f"backbone.{n}": t for n, t in load_file(paths.features / "backbone.safetensors").items()},
                 **{f"head.{n}": t for n, t in load_file(paths.fold_model("head", k) / "head.safetensors").items()}}
        assert set(start) == set(saved) and all(torch.equal(start[n], saved[n]) for n in saved)
        head_info = read_json(paths.fold_model("head", k) / "params.json")
        finetune_info = read_json(paths.fold_model("finetune", k) / "params.json")
        assert finetune_info["history"][0]["logloss"] == pytest.approx(head_info["history"][-1]["logloss"], rel=2e-3)


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
def test_ensemble_reports_the_cross_fitted_score_and_every_fold(pipeline_run, comp_name):
    root, params, _ = pipeline_run
    paths = Paths(comp_name, root)
    metrics, cv = read_json(paths.metrics), read_json(paths.cv)
    assert cv["choice"]["kind"] in ("head", "finetune", "both", "weighted")
    assert cv["choice"]["method"] in ("none", "temperature", "clip")
    assert cv["source"] == "demo" and metrics["demo_test"] == cv["demo_test"]["logloss"] > 0
    assert set(metrics) == {"logloss", "accuracy", "demo_test"}, "top level: numbers worth diffing, no more"
    cv = read_json(paths.cv)
    assert set(cv["folds"]) == {str(k) for k in params.folds}
    members = {f"{model}/{stage}" for model in params.models for stage in ("head", "finetune")}
    for fold in [*cv["folds"].values(), cv]:
        assert set(fold["weights"]) == members
        weights = np.array(list(fold["weights"].values()))
        assert (weights >= 0).all() and weights.sum() == pytest.approx(1, abs=1e-5)
    for fold in cv["folds"].values():
        assert {f"{m}_{s}" for m in members for s in ("logloss", "accuracy")} | {"choice"} <= set(fold)
    # The folds (and the groups) partition the rows: their row-weighted scores are the overall score.
    parts = [cv["folds"]] + ([cv["groups"]] if get_competition(comp_name).group_column else [])
    for part in parts:
        rows = np.array([v["rows"] for v in part.values()])
        assert rows.sum() == len(pd.read_csv(paths.folds))
        for key in ("logloss", "accuracy"):
            pooled = (rows * np.array([v[key] for v in part.values()])).sum() / rows.sum()
            assert pooled == pytest.approx(metrics[key], abs=1e-5)


def test_state_farm_is_scored_per_driver_with_each_driver_in_one_fold(pipeline_run):
    root, _, _ = pipeline_run
    folds = pd.read_csv(Paths("statefarm", root).folds, dtype={"group": str})
    groups = read_json(Paths("statefarm", root).cv)["groups"]
    assert set(groups) == set(folds["group"])
    for driver, g in groups.items():
        rows = folds[folds["group"] == driver]
        assert g["rows"] == len(rows) and {g["fold"]} == set(rows["fold"])
    assert read_json(Paths("dogscats", root).cv)["groups"] == {}, "no groups: no per-group rows"


def test_submission_never_holds_a_zero_or_a_one(pipeline_run):
    """Kaggle clips at 1e-15: a written 0 on the true class costs 34.5, so none is written, even for certainty."""
    root, _, _ = pipeline_run
    comp = get_competition("statefarm")
    sub = pd.read_csv(Paths("statefarm", root).submission)
    values = sub[list(comp.submission_columns)].to_numpy()
    assert (values > 0).all() and (values < 1).all()
    extreme = make_submission(comp, ["a.jpg", "b.jpg"], np.eye(10)[:2] * 1.0)
    written = pd.read_csv(io.StringIO(extreme.to_csv(index=False, float_format=FLOAT_FORMAT)))
    assert (written[list(comp.submission_columns)].to_numpy() > 0).all()
    assert (written[list(comp.submission_columns)].to_numpy() < 1).all()


def test_usable_cpus_is_the_affinity_where_the_os_has_one_and_every_core_where_not(monkeypatch):
    """Linux restricts a process to some cores (containers, taskset); macOS has no sched_getaffinity."""
    import os

    from pipeline.core.machine import usable_cpus

    assert usable_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cpus() == os.cpu_count()


def test_an_image_id_spelt_na_is_an_id_not_a_missing_value(tmp_path):
    """pandas reads "NA" as missing unless told not to: the fold's rows would be reported as not covered."""
    from pipeline.data.outputs import load_oof

    comp = get_competition("dogscats")
    fold = tmp_path / "fold0"
    fold.mkdir()
    first, second = comp.classes
    pd.DataFrame({"id": ["NA", "7"], "label": [second, first], first: [0.2, 0.9], second: [0.8, 0.1]}).to_csv(
        fold / "oof.csv", index=False)
    assert load_oof(comp, [fold], np.array(["7", "NA"])).tolist() == [[0.9, 0.1], [0.2, 0.8]]


def test_the_summary_times_the_one_inputs_stage_and_drops_logs_of_stages_gone(tmp_path):
    from pipeline.core.io import write_json
    from pipeline.core.stage import LOGS
    from pipeline.stages.summary import timings_table

    def log(stage, comp, seconds):
        write_json(tmp_path / LOGS / f"{stage}.json", {"stage": stage, "competition": comp, "model": None,
                                                       "fold": None, "seconds": seconds, "finished": "2026-12-03T10"})

    log("inputs", None, 0.5)
    log("inputs@dogscats", "dogscats", 2.5)  # left by the per-competition inputs stages this one replaced
    log("download@dogscats", "dogscats", 1.0)
    table = timings_table(tiny_params(), tmp_path)
    rows = {(r.competition, r.stage): r.seconds for r in table.itertuples()}
    assert rows == {("(all)", "inputs"): "0.5", ("dogscats", "download"): "1.0"}


def _ensemble_copy(src, root, comp_name="dogscats"):
    """A copy of what the tiny run's ensemble stage reads, to run it again with other params or inputs."""
    import shutil
    from pathlib import Path

    for folder in (Path("data") / comp_name, Path("folds"), Path("models") / comp_name):
        shutil.copytree(src / folder, root / folder)
    return Paths(comp_name, root)


def test_the_metrics_record_the_archive_by_its_file_name(pipeline_run, tmp_path):
    """`source` in metrics/<comp>.json is demo, kaggle or the zip's file name, not its folder (a home directory
    made `dvc metrics show` 144 columns wide)."""
    from pipeline.core.io import write_json
    from pipeline.stages import ensemble

    src, params, _ = pipeline_run
    paths = _ensemble_copy(src, tmp_path)
    summary = read_json(paths.raw / "summary.json")
    write_json(paths.raw / "summary.json", {**summary, "source": "/home/someone/Downloads/kaggle/dogs-vs-cats.zip"})
    ensemble.run(params, "dogscats", tmp_path)
    assert read_json(paths.cv)["source"] == "dogs-vs-cats.zip"


def test_a_members_own_score_is_before_neighbour_smoothing_overall_and_per_fold(pipeline_run, tmp_path):
    """cv.json's `members_logloss` and each fold's `<member>_logloss` score the same predictions, the member's own
    (the overall one was of the smoothed predictions): over the folds' rows they pool to it."""
    from pipeline.stages import ensemble

    src, _, _ = pipeline_run
    params = tiny_params(**{"dogscats.ensemble.neighbours": 2})
    paths = _ensemble_copy(src, tmp_path)
    ensemble.run(params, "dogscats", tmp_path)
    cv = read_json(paths.cv)
    rows = np.array([f["rows"] for f in cv["folds"].values()])
    for member, overall in cv["members_logloss"].items():
        pooled = (rows * np.array([f[f"{member}_logloss"] for f in cv["folds"].values()])).sum() / rows.sum()
        assert pooled == pytest.approx(overall, abs=1e-5), member
