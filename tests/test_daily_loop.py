"""The pieces of a competitor's daily loop that need no `dvc repro`: learning-curve pictures, the noise verdict of
`pipeline compare`, and a params.yaml that `dvc exp run -S` rewrites without reformatting."""

import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO
from pipeline import compare, curves
from pipeline.errors import ConfigError
from pipeline.io import read_json
from pipeline.paths import Paths


@pytest.mark.parametrize("stage", curves.STAGES)
def test_curve_steps_are_the_epochs_the_stage_recorded(pipeline_run, stage):
    """dvclive's step k is epoch k of the fold's history (epoch 0: the starting point), as the stage prints it."""
    root, params, _ = pipeline_run
    paths = Paths("statefarm", root)
    for k in params.folds:
        history = read_json(paths.model(stage, k) / "params.json")["history"]
        val = curves.read_curve(paths.live(stage, k), "val/logloss")
        assert val["step"].tolist() == [h["epoch"] for h in history]
        assert np.allclose(val["value"], [h["logloss"] for h in history])
        train = curves.read_curve(paths.live(stage, k), "train/loss")
        assert train["step"].tolist() == [h["epoch"] for h in history if "train_loss" in h]


def test_learning_curves_picture_has_every_fold_of_both_stages(pipeline_run, tmp_path):
    root, params, _ = pipeline_run
    shutil.copytree(root / "dvclive", tmp_path / "dvclive")
    out = curves.run(params, "dogscats", tmp_path)
    assert out == Paths("dogscats", tmp_path).plots / "learning_curves.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 2 * img.height > 600


def test_a_missing_curve_names_the_stage_to_rerun(pipeline_run, tmp_path):
    _, params, _ = pipeline_run
    with pytest.raises(Exception, match=r"dvc repro head@dogscats-0"):
        curves.run(params, "dogscats", tmp_path)


def test_verdict_calls_a_consistent_gain_real_and_a_small_scattered_one_noise():
    real = compare._verdict(np.array([-0.05, -0.06, -0.055, -0.05, -0.045]), "fold")
    assert "likely better" in real and "lower on 5/5 folds" in real
    noise = compare._verdict(np.array([0.002, -0.01, 0.012, -0.004, 0.003]), "fold")
    assert "within noise" in noise and "spread (sd) 0.0" in noise
    # a large mean driven by one fold is not a consistent gain either
    assert "within noise" in compare._verdict(np.array([-0.2, 0.01, 0.0, 0.01, -0.01]), "fold")


def test_compare_names_an_unknown_revision(tmp_path):
    with pytest.raises(ConfigError, match="cannot find revision 'nope'.*dvc exp show"):
        compare.run("statefarm", ["nope"], root=REPO)


def test_dvc_exp_run_set_param_changes_one_line_of_params_yaml(tmp_path):
    """`dvc exp run -S` rewrites params.yaml through DVC's own YAML writer: the shipped file is already in the form
    it writes, so an experiment's diff is the changed value alone (comments and layout kept)."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    original = path.read_text()
    apply_overrides(path, [f"seed={yaml.safe_load(original)['seed']}"])
    assert path.read_text() == original, "params.yaml is not in the form DVC writes back"
    apply_overrides(path, ["statefarm.head.dropout=0.3"])
    changed = [(a, b) for a, b in zip(original.splitlines(), path.read_text().splitlines()) if a != b]
    assert len(original.splitlines()) == len(path.read_text().splitlines())
    assert len(changed) == 1 and changed[0][1].strip().startswith("dropout: 0.3"), changed
