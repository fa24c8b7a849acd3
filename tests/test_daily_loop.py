"""The pieces of a competitor's daily loop that need no `dvc repro`: learning-curve pictures, the noise verdict of
`pipeline compare`, and a params.yaml that `dvc exp run -S` rewrites without reformatting."""

import json
import re
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, tiny_params
from pipeline.commands import compare
from pipeline.stages import curves
from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.core.paths import Paths


@pytest.mark.parametrize("stage", curves.STAGES)
def test_curve_steps_are_the_epochs_the_stage_recorded(pipeline_run, stage):
    """dvclive's step k is epoch k of the fold's history (epoch 0: the starting point), as the stage prints it."""
    root, params, _ = pipeline_run
    paths = Paths("statefarm", root)
    for k in params.folds:
        history = read_json(paths.fold_model(stage, k) / "params.json")["history"]
        val = curves.read_curve(paths.live(stage, k), "val/logloss")
        assert val["step"].tolist() == [h["epoch"] for h in history]
        assert np.allclose(val["value"], [h["logloss"] for h in history])
        train = curves.read_curve(paths.live(stage, k), "train/loss")
        assert train["step"].tolist() == [h["epoch"] for h in history if "train_loss" in h]


def test_learning_curves_picture_has_every_fold_of_both_stages_of_every_model(pipeline_run, tmp_path):
    root, params, _ = pipeline_run
    shutil.copytree(root / "dvclive", tmp_path / "dvclive")
    out = curves.run(params, "dogscats", tmp_path)
    assert out == Paths("dogscats", tmp_path).plots / "learning_curves.png"
    with Image.open(out) as img:
        # a row of two panels (head, finetune) per model
        assert img.format == "PNG" and img.width > 1000 and img.height > 600 * len(params.models) / 2


def test_a_missing_curve_names_the_stage_to_rerun(pipeline_run, tmp_path):
    _, params, _ = pipeline_run
    with pytest.raises(Exception, match=r"dvc repro head@dogscats-main`"):
        curves.run(params, "dogscats", tmp_path)


def test_verdict_calls_a_consistent_gain_real_and_a_small_scattered_one_noise():
    rows = np.full(5, 100.0)
    real = compare.fold_verdict(np.array([-0.05, -0.06, -0.055, -0.05, -0.045]), rows, 5)
    assert "likely better" in real and "lower on 5/5 folds" in real
    # accuracy, F1, ROC AUC: a consistent rise is the gain
    gain = np.array([0.05, 0.06, 0.055, 0.05, 0.045])
    assert "likely better" in compare.fold_verdict(gain, rows, 5, higher_is_better=True)
    assert "likely worse" in compare.fold_verdict(gain, rows, 5)
    noise = compare.fold_verdict(np.array([0.002, -0.01, 0.012, -0.004, 0.003]), rows, 5)
    assert "not distinguishable from noise" in noise and "2.8 needed" in noise  # t(0.975, 4) = 2.78
    # one fold driving a large mean is no consistent gain, though the naive t (2.4) would call it one
    assert "not distinguishable" in compare.fold_verdict(np.array([-0.05, -0.05, -0.05, 0.001, 0.001]), rows, 5)
    assert compare.fold_verdict(np.zeros(5), rows, 5).startswith("identical on every fold")
    # the test takes each fold once; the row-weighted change of the overall score is shown beside it
    one_big_fold = compare.fold_verdict(np.array([-0.1, 0, 0, 0, 0]), np.array([1000.0, 10, 10, 10, 10]), 5)
    assert "mean fold change -0.0200 (overall, row-weighted: -0.0962)" in one_big_fold
    assert "not distinguishable from noise: 0.7 corrected standard errors from zero, 2.8 needed" in one_big_fold


def test_verdict_is_the_corrected_test_where_the_naive_one_would_call_a_gain():
    diffs = np.array([-0.03, -0.01, -0.025, 0.0, -0.02])
    naive_t = abs(diffs.mean()) / (diffs.std(ddof=1) / np.sqrt(5))
    assert naive_t > 2.78, "the naive t-test (t(0.975, 4) = 2.78) calls it real"
    shown = compare.fold_verdict(diffs, np.full(5, 100.0), 5)
    assert "not distinguishable from noise: 2.1 corrected standard errors from zero, 2.8 needed" in shown


def test_repeated_cross_validation_uses_the_corrected_repeated_test():
    """r seeds x k folds: variance scaled by 1/(r k) + 1/(k - 1), Student's t on r k - 1 degrees of freedom
    (Bouckaert & Frank): the fold-overlap term does not shrink with repeats, so repeats help, but less than r-fold."""
    diffs = np.array([-0.03, -0.01, -0.02, 0.005, -0.025] * 3)
    shown = compare.fold_verdict(diffs, np.full(15, 100.0), 5)
    se = diffs.std(ddof=1) * np.sqrt(1 / 15 + 1 / 4)
    assert f"corrected standard error {se:.4f}" in shown and "lower on 12/15 folds" in shown
    assert "likely better: 2.2 corrected standard errors from zero" in shown  # t(0.975, 14) = 2.14
    single = compare.fold_verdict(diffs[:5], np.full(5, 100.0), 5)
    assert "not distinguishable" in single and "2.8 needed" in single


def _git_project(pipeline_run, tmp_path):
    """A copy of the session's tiny run as a git repository whose HEAD holds its metrics (the baseline)."""
    root, params, _ = pipeline_run
    repo = tmp_path / "repo"
    shutil.copytree(root, repo)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "metrics"], ["commit", "-qm", "baseline"]):
        subprocess.run(git + args, cwd=repo, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    return repo, params, head


def test_compare_pairs_folds_and_drivers_and_credits_kaggle_scores(pipeline_run, tmp_path):
    repo, params, head = _git_project(pipeline_run, tmp_path)
    base = read_json(Paths("statefarm", repo).cv)
    # the experiment: the same fold models, ensembled from the members the baseline did not choose (real outputs,
    # other scores; the baseline's one-standard-error rule may already have picked heads without calibration)
    from pipeline.stages import ensemble

    other = "finetune" if base["folds"]["0"]["choice"].startswith("head") else "head"
    changed = tiny_params(**{"statefarm.ensemble.calibration": "none", "statefarm.ensemble.members": other})
    ensemble.run(changed, "statefarm", repo)
    exp = read_json(Paths("statefarm", repo).cv)
    exp_metrics = read_json(Paths("statefarm", repo).metrics)
    assert any(exp["folds"][k]["logloss"] != base["folds"][k]["logloss"] for k in base["folds"])
    (repo / "submissions").mkdir(exist_ok=True)
    pd.DataFrame([
        {"time": "t1", "competition": "statefarm", "commit": head, "experiment": "", "cv_logloss": base["logloss"],
         "public_score": 0.9, "private_score": 0.95, "status": "COMPLETE", "message": "", "ref": "1"},
        {"time": "t2", "competition": "statefarm", "commit": f"{head}-dirty", "experiment": "",
         "cv_logloss": exp_metrics["logloss"], "public_score": 0.8, "private_score": 0.85, "status": "COMPLETE",
         "message": "", "ref": "2"},
    ]).to_csv(repo / "submissions" / "scores.csv", index=False)

    shown = compare.run("statefarm", [], root=repo)
    for k in map(str, params.folds):
        b, e = base["folds"][k]["logloss"], exp["folds"][k]["logloss"]
        assert re.search(rf"\n +{k} +\d+ +{b:.4f} +{e:.4f} +{re.escape(f'{e - b:+.4f}')}\n", shown), shown
    for driver, g in base["groups"].items():
        e = exp["groups"][driver]["logloss"]
        assert re.search(rf"\n +{driver} +{g['fold']} +{g['rows']} +{g['logloss']:.4f} +{e:.4f} ", shown), shown
    assert "corrected standard error" in shown and "Per driver" in shown
    assert re.search(r"\n *HEAD +t1 ", shown) and re.search(r"\n *workspace +t2 +\w{12}-dirty", shown), shown
    assert (Paths("statefarm", repo).reports / "cv_vs_leaderboard.png").is_file()


def test_compare_refuses_to_pair_folds_that_hold_other_rows(pipeline_run, tmp_path):
    repo, _, _ = _git_project(pipeline_run, tmp_path)
    cv_path = Paths("statefarm", repo).cv
    cv = read_json(cv_path)
    cv["folds"]["0"]["rows_md5"] = "another seed's fold 0"
    cv_path.write_text(json.dumps(cv))
    shown = compare.run("statefarm", [], root=repo)
    assert "folds hold other rows" in shown and "Per fold" not in shown and "Per driver" in shown


def test_compare_says_when_two_runs_come_from_other_machines(pipeline_run, tmp_path):
    repo, _, _ = _git_project(pipeline_run, tmp_path)
    cv_path = Paths("statefarm", repo).cv
    cv = read_json(cv_path)
    assert cv["environments"] and cv["environments"][0]["device"] == "cpu" and cv["environments"][0]["cpu"]
    assert "Note:" not in compare.run("statefarm", [], root=repo), "the same machine: nothing to say"
    cv["environments"] = [dict(cv["environments"][0], cpu="Another CPU 9000")]
    cv_path.write_text(json.dumps(cv))
    shown = " ".join(compare.run("statefarm", [], root=repo).split())  # notes fold at the terminal's width
    assert "Note: HEAD ran on torch" in shown and "workspace on torch" in shown and "Another CPU 9000" in shown
    assert "Make the baseline on this machine" in shown
    del cv["environments"]
    cv_path.write_text(json.dumps(cv))
    assert "workspace does not record the machine it ran on" in " ".join(compare.run("statefarm", [], root=repo).split())


def test_compare_names_an_unknown_revision(tmp_path):
    with pytest.raises(ConfigError, match="cannot find revision 'nope'.*dvc exp show"):
        compare.run("statefarm", ["nope"], root=REPO)


def test_compare_outside_a_git_repository_says_so_in_one_line(tmp_path):
    assert not any((d / ".git").exists() for d in (tmp_path, *tmp_path.parents))
    with pytest.raises(ConfigError, match="is not in a git repository; `pipeline compare` reads"):
        compare.run("statefarm", [], root=tmp_path)


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


def test_the_summary_says_which_scores_are_not_this_runs(pipeline_run, tmp_path):
    """After an interrupted run, metrics/ holds the committed numbers: the closing table must not pass them off. After
    the README's discard (`git checkout params.yaml dvc.lock metrics && dvc checkout`) they are this run's, though
    `dvc checkout` rewrote the models after git rewrote the metrics (the old rule, by modification times, said not)."""
    import os
    import time

    from pipeline.stages import summary

    src, params, _ = pipeline_run
    root = tmp_path / "project"
    for folder in ("metrics", "submissions", "models"):
        shutil.copytree(src / folder, root / folder)  # modification times kept
    assert "NOT this run's" not in summary.run(params, root)
    later = time.time() + 60
    for oof in (root / "models").glob("*/*/*/fold*/oof.csv"):  # the discard: the same files, written after
        os.utime(oof, (later, later))
    assert "NOT this run's" not in summary.run(params, root)
    (root / "submissions" / "statefarm" / "oof.csv").unlink()
    shown = " ".join(summary.run(params, root).split())
    assert "statefarm: NOT this run's scores: no out-of-fold predictions beside them" in shown
    assert "dogscats: NOT" not in shown
    oof = root / "models" / "dogscats" / params.models[0] / "finetune" / "fold0" / "oof.csv"
    oof.write_text(oof.read_text().replace("0.", "0.1", 1))  # an interrupted run's new fold predictions
    shown = " ".join(summary.run(params, root).split())  # its notes wrap at the terminal's width
    assert f"dogscats: NOT this run's scores: {oof.relative_to(root)} is not the one they were scored on" in shown
    assert "QUICK" not in summary.run(params, root)
    metrics = Paths("dogscats", root).metrics
    metrics.write_text(json.dumps({**read_json(metrics), "quick": "folds [0] of 3"}))
    assert "dogscats: a QUICK run (folds [0] of 3)" in " ".join(summary.run(params, root).split())
    assert max(map(len, summary.run(params, root).splitlines())) <= summary.WIDTH


def test_the_summary_times_the_full_run_after_a_quick_experiment_is_discarded(tmp_path, monkeypatch):
    """A quick run's stage logs go apart: after the discard the table shows the full run's times, not the quick
    run's (which overwrote them when every run logged to one place)."""
    from pipeline.core.stage import stage_main
    from pipeline.stages.summary import timings_table

    monkeypatch.chdir(tmp_path)
    for params, pause in ((tiny_params(), 0.0), (tiny_params(subsample=0.5), 0.3)):  # the full run, then a quick one
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
        stage_main("inputs", lambda p: time.sleep(pause), per_comp=False, argv=[], root=tmp_path)
    full = timings_table(tiny_params(), tmp_path)
    quick = timings_table(tiny_params(subsample=0.5), tmp_path)
    assert len(full) == len(quick) == 1 and float(quick.seconds[0]) - float(full.seconds[0]) >= 0.25


def test_compare_all_lists_each_experiment_with_its_changed_params_and_verdict(pipeline_run, tmp_path):
    """Experiments stored as DVC stores them (commits on top of the baseline, refs under refs/exps/): each is
    listed with only the params it changed, its CV, and the corrected test against the baseline's folds."""
    from pipeline.commands import experiments

    repo, params, head = _git_project(pipeline_run, tmp_path)
    (repo / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["add", "params.yaml"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "baseline params"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    cv_path, metrics_path = Paths("statefarm", repo).cv, Paths("statefarm", repo).metrics
    base_cv, base_metrics = read_json(cv_path), read_json(metrics_path)
    shifts = {"exp-steady": [-0.05, -0.06, -0.05], "exp-scattered": [-0.2, 0.15, 0.01]}
    for name, shift in shifts.items():  # one consistent gain, one that is noise
        cv = json.loads(json.dumps(base_cv))
        for k, d in zip(sorted(cv["folds"]), shift):
            cv["folds"][k]["logloss"] += d
        cv_path.write_text(json.dumps(cv))
        metrics_path.write_text(json.dumps({**base_metrics, "logloss": base_metrics["logloss"] + np.mean(shift)}))
        changed = tiny_params(**{"statefarm.head.dropout": 0.25 if name == "exp-steady" else 0.5,
                                 "statefarm.head.lr": 0.02})
        (repo / "params.yaml").write_text(yaml.safe_dump(changed.to_dict(), sort_keys=False))
        subprocess.run(git + ["commit", "-qam", name], cwd=repo, check=True)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        subprocess.run(["git", "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{name}", sha], cwd=repo, check=True)
        subprocess.run(["git", "reset", "-q", "--hard", head], cwd=repo, check=True)
    shown = experiments.run("statefarm", head, repo, width=100)
    assert "2 DVC experiment(s)" in shown and all(len(line) <= 100 for line in shown.splitlines())
    blocks = {block.split()[0]: block for block in shown.split("\n\n")[1:]}
    steady, scattered = (" ".join(blocks[name].split()) for name in ("exp-steady", "exp-scattered"))
    assert "statefarm.head.dropout: 0.5 -> 0.25" in steady and "statefarm.head.lr: 0.01 -> 0.02" in steady
    assert "dropout" not in scattered and "statefarm.head.lr: 0.01 -> 0.02" in scattered
    assert "likely better: CV logloss" in steady and "noise: CV logloss" in scattered
    assert f"mean fold change {np.mean(shifts['exp-steady']):+.4f}" in steady
    assert "seed" not in steady, "only what changed"
