"""Quick mode: `folds` lists fewer of the `fold_count` folds, `subsample` a share of each fold's training images;
end to end to a fold score that `pipeline compare` pairs with the same folds of a baseline."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_params
from pipeline.commands import compare, submit
from pipeline.stages import ensemble, finetune, head, summary
from pipeline.core.competitions import get_competition
from pipeline.core.io import read_json
from pipeline.data.outputs import fold_split
from pipeline.core.paths import Paths
from test_honest_scores import COMP, copy_upstream

QUICK = {"folds": [1], "fold_count": 3, "subsample": 0.5}


def test_a_subsample_is_a_seeded_share_of_each_class_and_keeps_every_validation_row(pipeline_run):
    root, _, _ = pipeline_run
    paths, comp = Paths(COMP, root), get_competition(COMP)
    whole, half = fold_split(paths, comp, 1), fold_split(paths, comp, 1, 0.5, seed=0)
    assert np.array_equal(whole.val_rows, half.val_rows)
    assert set(half.train_rows) < set(whole.train_rows) and np.all(np.diff(half.train_rows) > 0)
    for c in np.unique(whole.labels[whole.train_rows]):
        n = int((whole.labels[whole.train_rows] == c).sum())
        assert (half.labels[half.train_rows] == c).sum() == min(n, max(2, round(0.5 * n)))
    assert np.array_equal(half.train_rows, fold_split(paths, comp, 1, 0.5, seed=0).train_rows)
    assert not np.array_equal(half.train_rows, fold_split(paths, comp, 1, 0.5, seed=1).train_rows)


def test_a_quick_run_scores_its_folds_only_and_says_so(pipeline_run, tmp_path, monkeypatch):
    """One fold of three on half the images: the heads and networks learn from the subsample, the ensemble scores
    that fold's rows (nothing chosen on them: the finetuned networks as they are), the metrics say QUICK, compare
    pairs the fold with a full baseline's and names the subsample, and no submission is written for submit or a hand
    upload."""
    root, _, _ = pipeline_run
    params = tiny_params(**QUICK)
    assert params.quick
    paths = copy_upstream(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    head.run(params, COMP, "main", 1, tmp_path)
    finetune.run(params, COMP, "main", 1, tmp_path)
    for model in params.models[1:]:
        shutil.copytree(Paths(COMP, root, model).features, Paths(COMP, tmp_path, model).features)
        head.run(params, COMP, model, 1, tmp_path)
        finetune.run(params, COMP, model, 1, tmp_path)
    (tmp_path / "data" / COMP / "raw").joinpath("summary.json").write_text(
        (Paths(COMP, root).raw / "summary.json").read_text())
    # an earlier full run's files, as run by hand (DVC would empty the folder) and in the layout before the folder
    stale = [paths.submission, tmp_path / "submissions" / f"{COMP}.csv", tmp_path / "submissions" / f"{COMP}_oof.csv"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Paths(COMP, root).submission, path)
    result = ensemble.run(params, COMP, tmp_path)
    subsample = len(fold_split(paths, get_competition(COMP), 1, 0.5, seed=0).train_rows)
    assert subsample < len(fold_split(paths, get_competition(COMP), 1).train_rows)
    for stage in ("head", "finetune"):  # both learnt from the subsample, the same rows
        assert read_json(paths.fold_metrics(stage, 1))["train_rows"] == subsample
    oof = pd.read_csv(paths.oof, dtype={"id": str})
    fold_of = pd.read_csv(paths.folds, dtype={"id": str}).set_index("id")["fold"]
    assert set(oof["fold"]) == {1} and len(oof) == int((fold_of == 1).sum())
    assert list(result["folds"]) == ["1"] and result["choice"]["kind"] == "finetune"
    assert result["choice"]["method"] == "none" and result["quick"] == "folds [1] of 3, subsample 0.5"
    assert result["run"] == {"folds": [1], "fold_count": 3, "subsample": 0.5}
    assert any("quick run" in p for p in submit.source_problems(COMP, tmp_path))
    # no file a hand upload could send: only the out-of-fold predictions, and submit says why
    assert sorted(p.name for p in paths.submissions.iterdir()) == ["oof.csv"] and not any(p.exists() for p in stale)
    with pytest.raises(FileNotFoundError, match=r"a quick run \(folds \[1\] of 3, subsample 0.5\), which writes no"):
        submit.checked_submission(COMP, tmp_path)
    assert "none: quick" in summary.scores_table(params, tmp_path).to_string()
    # against the full run's folds: fold 1 is paired, and the note names the subsample
    full = compare.Run("full", "x", read_json(Paths(COMP, root).cv), read_json(Paths(COMP, root).metrics))
    quick = compare.Run("quick", None, json.loads(paths.cv.read_text()), result)
    assert compare.same_folds(full, quick)
    table = compare.paired_table(full, [quick], "folds", ("rows",), "fold")
    assert list(table["fold"]) == ["1"]
    assert "full learnt from 100% of each fold's training images, quick from 50%" in compare.quick_note(full, quick)
