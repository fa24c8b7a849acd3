"""`pipeline score`: the submission file scored against a local answer key, recorded as LOCAL."""

import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline import cli

from pipeline.commands import submit
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_json
from pipeline.core.paths import EXTRACTED, Paths


def _project(root, tmp_path, comp):
    """The files `pipeline score` reads, copied out of the session's tiny run (it writes scores.csv)."""
    src, dst = Paths(comp, root), Paths(comp, tmp_path)
    for path in (src.submission, src.metrics, src.raw / EXTRACTED / "sample_submission.csv", src.demo_answers):
        target = tmp_path / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return dst


@pytest.mark.parametrize("comp", ["dogscats", "statefarm"])
def test_score_of_the_demo_answers_is_the_ensembles_demo_test_score(pipeline_run, tmp_path, monkeypatch, capsys,
                                                                     comp):
    """Two paths to one number: the ensemble scores the frame it writes, `pipeline score` the file it reads."""
    root, _, _ = pipeline_run
    paths = _project(root, tmp_path, comp)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["score", comp, str(paths.demo_answers)]) == 0
    shown = capsys.readouterr().out
    metrics = read_json(paths.metrics)
    recorded = pd.read_csv(submit.scores_path(tmp_path), dtype=str).iloc[-1]
    assert recorded["status"] == "LOCAL" and recorded["public_score"] != recorded["public_score"]  # NaN: none
    assert float(recorded["local_score"]) == pytest.approx(metrics["demo_test"], abs=1e-6)
    assert float(recorded["cv_score"]) == pytest.approx(metrics["logloss"], abs=1e-6)
    assert f"local logloss {metrics['demo_test']:.4f} +- " in shown and "not a leaderboard score" in shown


def test_a_partial_answer_key_scores_only_its_rows(pipeline_run, tmp_path, monkeypatch):
    root, _, _ = pipeline_run
    comp = "statefarm"
    paths = _project(root, tmp_path, comp)
    answers = pd.read_csv(paths.demo_answers, dtype=str)
    sub = pd.read_csv(paths.submission, dtype={"img": str}).set_index("img")
    half = answers.iloc[: len(answers) // 2]
    half.to_csv(tmp_path / "half.csv", index=False)
    monkeypatch.chdir(tmp_path)
    from pipeline.commands import score

    r = score.run(comp, tmp_path / "half.csv", tmp_path)
    probs = sub.loc[half["id"]].to_numpy(dtype=float)
    truth = probs[np.arange(len(half)), [int(label[1:]) for label in half["label"]]]
    assert r["local_rows"] == len(half) < r["submission_rows"]
    assert r["local_logloss"] == pytest.approx(-np.log(np.clip(truth, 1e-15, 1)).mean(), abs=1e-6)


@pytest.mark.parametrize("breakage, message", [
    (lambda a: a.rename(columns={"label": "class"}), "expected columns 'id'"),
    (lambda a: a.assign(label="c99"), "are not State Farm Distracted Driver Detection classes"),
    (lambda a: pd.concat([a, a.iloc[:1]]), "is answered twice"),
    (lambda a: pd.concat([a, pd.DataFrame({"id": ["img_nope.jpg"], "label": ["c0"]})]), "are not in"),
])
def test_a_bad_answer_key_is_refused_with_the_reason(pipeline_run, tmp_path, breakage, message):
    root, _, _ = pipeline_run
    paths = _project(root, tmp_path, "statefarm")
    breakage(pd.read_csv(paths.demo_answers, dtype=str)).to_csv(tmp_path / "bad.csv", index=False)
    from pipeline.commands import score

    with pytest.raises(PipelineError, match=message):
        score.run("statefarm", tmp_path / "bad.csv", tmp_path)
    assert not submit.scores_path(tmp_path).exists()


def test_an_answer_key_in_kaggles_own_columns_is_read(tmp_path, monkeypatch):
    """Kaggle's layout, the sample submission's columns (Plant Seedlings: `file,species`), was refused."""
    import dataclasses

    from pipeline.commands import score
    from pipeline.core.competitions import get_competition

    seedlings = dataclasses.replace(get_competition("digits"), id_column="file", submission_columns=("species",))
    monkeypatch.setattr(score, "get_competition", lambda name: seedlings)
    (tmp_path / "key.csv").write_text("file,species\na.png,3\nb.png,7\n")
    assert score.read_answers("seedlings", tmp_path / "key.csv").to_dict() == {"a.png": "3", "b.png": "7"}
    (tmp_path / "bad.csv").write_text("file,kind\na.png,3\n")
    with pytest.raises(score.AnswersError, match="expected columns 'id' \\(or 'file'\\) and 'label' or 'species'"):
        score.read_answers("seedlings", tmp_path / "bad.csv")


def test_provenance_names_experiments_not_dvcs_own_refs(tmp_path):
    """While `dvc exp run` runs, refs/exps/exec/ORIG_HEAD and EXEC_HEAD point at HEAD too: scores.csv recorded
    them as the experiment ('ORIG_HEAD EXEC_HEAD')."""
    import subprocess

    from pipeline.core.gitinfo import provenance

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    for ref in ("refs/exps/exec/ORIG_HEAD", "refs/exps/exec/EXEC_HEAD", f"refs/exps/ab/{'c' * 38}/drop03"):
        subprocess.run(["git", "update-ref", ref, "HEAD"], cwd=tmp_path, check=True)
    assert provenance(tmp_path)[1] == "drop03"
