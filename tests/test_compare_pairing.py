"""`pipeline compare` pairs only like with like: the same split, the same scored folds (a fold's ensemble is chosen on
the other scored folds), each seed with its own seed; the corrected t-test's n_test/n_train comes from
`fold_count`. Runs are the committed State Farm cv.json, changed the way a quick run, another fold count, another
model list or another seed changes it, committed in a small git repository as DVC experiments commit them."""

import copy
import json
import math
import re
import subprocess

import numpy as np
import pytest
import yaml

from conftest import REPO
from pipeline import cli
from pipeline.commands import compare
from pipeline.core.errors import ConfigError

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
FULL = json.loads((REPO / "metrics" / "statefarm" / "cv.json").read_text())
METRICS = json.loads((REPO / "metrics" / "statefarm.json").read_text())
PARAMS = {"seed": 42, "folds": [0, 1, 2, 3, 4], "fold_count": 5, "subsample": 1.0,
          "statefarm": {"head": {"dropout": 0.5}}}


def quick(cv: dict, folds=(0,), subsample=0.5) -> dict:
    """What a quick run of the same split writes: only its folds, and on one fold the finetuned networks as they
    are (stages/ensemble.py), so the fold's ensemble score is its finetune member's."""
    out = copy.deepcopy(cv)
    out["run"] = {"folds": list(folds), "fold_count": cv["run"]["fold_count"], "subsample": subsample}
    out["folds"] = {str(k): cv["folds"][str(k)] for k in folds}
    if len(folds) == 1:
        k = str(folds[0])
        fold = out["folds"][k]
        out["folds"][k] = dict(fold, logloss=fold["main/finetune_logloss"], choice="finetune+none")
    return out


def shifted(cv: dict, shifts, seed: int | None = None) -> dict:
    """The same run with each fold's log loss (ensemble and members) moved; another seed's folds hold other rows."""
    out = copy.deepcopy(cv)
    for k, d in zip(sorted(out["folds"]), shifts):
        fold = out["folds"][k]
        for key in [key for key in fold if key == "logloss" or key.endswith("/finetune_logloss")]:
            fold[key] += d
        if seed is not None:
            fold["rows_md5"] = f"{fold['rows_md5']}-seed{seed}"
    return out


def repo(tmp_path, runs: dict, workspace: dict | None = None):
    """A git repository with one tagged commit per run (name -> (cv.json, params)); `workspace`: cv.json on disk."""
    root = tmp_path / "repo"
    (root / "metrics" / "statefarm").mkdir(parents=True)
    subprocess.run(GIT + ["init", "-q"], cwd=root, check=True)
    for name, (cv, params) in runs.items():
        (root / "metrics" / "statefarm" / "cv.json").write_text(json.dumps(cv))
        (root / "metrics" / "statefarm.json").write_text(json.dumps(METRICS))
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        for args in (["add", "metrics", "params.yaml"], ["commit", "-q", "--allow-empty", "-m", name], ["tag", name]):
            subprocess.run(GIT + args, cwd=root, check=True)
    if workspace is not None:
        (root / "metrics" / "statefarm" / "cv.json").write_text(json.dumps(workspace))
    return root


def with_params(**changes) -> dict:
    return {**PARAMS, **changes}


def test_a_quick_run_is_not_paired_with_a_full_runs_ensemble_but_its_members_are(tmp_path):
    """On the committed State Farm run, a quick fold 0 (forced to finetune+none) against the full run's cross-fitted
    choice showed a "change" that was only the procedure; now its members are paired instead, and it says why."""
    # the full run's fold 0 as the committed run at be65d76 had it: a choice that departed from the finetuned
    # networks (weighted+temperature, 0.081 above them); today's committed run chose them on every fold
    fold = FULL["folds"]["0"]
    full = {**FULL, "folds": {**FULL["folds"], "0": dict(fold, logloss=fold["main/finetune_logloss"] + 0.081,
                                                          choice="weighted+temperature")}}
    run = quick(full)
    procedure = run["folds"]["0"]["logloss"] - full["folds"]["0"]["logloss"]
    assert abs(procedure) > 0.05, "the full run's fold 0 is a cross-fitted choice"
    shown = compare.run("statefarm", ["workspace"], "full", repo(tmp_path, {"full": (full, PARAMS)}, run))
    assert f"{procedure:+.4f}" not in shown and "Per fold" not in shown, shown
    flat = " ".join(shown.split())
    assert "full scored folds [0, 1, 2, 3, 4], workspace folds [0]" in flat and "differ by procedure" in flat
    assert "full learnt from 100% of each fold's training images, workspace from 50%" in flat
    member = re.search(r"\nmain/finetune +([\d.]+) +([\d.]+) +([-+][\d.]+) +1\n", shown)
    assert member and float(member[1]) == pytest.approx(full["folds"]["0"]["main/finetune_logloss"], abs=6e-5), shown
    assert "main/finetune: identical on every fold" in shown
    assert "workspace is not compared per driver: its ensemble was chosen on other folds" in flat
    assert "Per driver" not in shown, "a driver's score is its fold's ensemble's: the same procedure problem"


def test_quick_runs_of_the_same_folds_are_paired(tmp_path):
    """Quick against quick is like with like: paired per fold, and one fold says what would judge it."""
    base, change = quick(FULL), shifted(quick(FULL), [-0.02])
    shown = compare.run("statefarm", ["workspace"], "quick-base",
                        repo(tmp_path, {"quick-base": (base, PARAMS)}, change))
    assert "Per fold (each change paired on the same rows)" in shown and "differ by procedure" not in shown
    assert "change -0.0200 on a single fold: no spread to judge it by" in shown
    assert "pipeline compare statefarm CHANGE-s1 CHANGE-s2 -b BASE-s1 BASE-s2" in " ".join(shown.split())


def test_another_fold_count_is_never_paired_per_fold(tmp_path):
    """A run of 3 folds against one of 5: refused per fold even if a fold's rows hash the same (old code paired
    on the hashes alone)."""
    other = copy.deepcopy(FULL)
    other["run"] = dict(FULL["run"], fold_count=3)
    shown = compare.run("statefarm", ["workspace"], "full", repo(tmp_path, {"full": (FULL, PARAMS)}, other))
    assert "workspace split the rows into 3 folds, full into 5" in " ".join(shown.split())
    assert "Per fold" not in shown and "Per member" not in shown and "Per driver" in shown


def test_the_correction_takes_n_test_over_n_train_from_fold_count_not_the_folds_compared(tmp_path):
    """Folds [0, 1, 2] of 5: each model trained on 4/5 of the rows, so n_test/n_train = 1/4, not 1/(3 - 1)."""
    base = quick(FULL, folds=(0, 1, 2), subsample=1.0)
    shifts = [-0.03, -0.01, -0.02]
    shown = compare.run("statefarm", ["workspace"], "part",
                        repo(tmp_path, {"part": (base, PARAMS)}, shifted(base, shifts)))
    se = np.std(shifts, ddof=1) * math.sqrt(1 / 3 + 1 / 4)
    assert f"corrected standard error {se:.4f}" in shown, shown
    assert "Per member" in shown and "main/finetune: " not in shown, "members: a description when ensembles pair"


def test_runs_with_other_model_lists_compare_the_ensemble_and_the_members_both_have(tmp_path):
    other = copy.deepcopy(FULL)
    for fold in other["folds"].values():
        fold["cut/finetune_logloss"] = fold.pop("main/head_logloss") - 0.01
        fold["logloss"] -= 0.01
    shown = compare.run("statefarm", ["workspace"], "full", repo(tmp_path, {"full": (FULL, PARAMS)}, other))
    assert "Per fold (each change paired on the same rows)" in shown and "mean fold change -0.0100" in shown
    assert "only full has main/head; only workspace has cut/finetune (not compared)" in " ".join(shown.split())
    members = shown.split("Per member")[1].split("Per driver")[0]
    assert re.search(r"\n *main/finetune ", members) and not re.search(r"\n *(main/head|cut/finetune) ", members)


def seeded(tmp_path, change=with_params(statefarm={"head": {"dropout": 0.3}})):
    """HEAD-like baseline at the shipped seed and another seed, and a change at the same two seeds."""
    runs = {"base-s42": (FULL, PARAMS), "base-s1": (shifted(FULL, [0.0] * 5, seed=1), with_params(seed=1))}
    steady = [-0.03, -0.01, -0.025, 0.0, -0.02]
    runs["chg-s42"] = (shifted(FULL, steady), {**change, "seed": 42})
    runs["chg-s1"] = (shifted(FULL, steady[::-1], seed=1), {**change, "seed": 1})
    return repo(tmp_path, runs), steady


def test_repeated_seeds_pair_each_seed_with_its_own_and_apply_the_corrected_repeated_test(tmp_path):
    """Two seeds x 5 folds: 1/10 + 1/4 on 9 degrees of freedom (Bouckaert & Frank), each change against the
    baseline of its seed, whichever order they are named in."""
    root, steady = seeded(tmp_path)
    shown = compare.run("statefarm", ["chg-s1", "chg-s42"], ["base-s42", "base-s1"], root)
    diffs = np.array(steady + steady[::-1])
    se = diffs.std(ddof=1) * math.sqrt(1 / 10 + 1 / 4)
    flat = " ".join(shown.split())
    assert "2 seeds x 5 folds of 5 (corrected repeated k-fold test)" in flat, shown
    assert f"corrected standard error {se:.4f}" in flat and "lower on 8/10 folds" in flat
    assert "likely better" in flat and "Per driver (subject), mean over the seeds" in flat
    assert re.search(r"\n +42 +base-s42 +[\d.]+ +chg-s42 ", shown) and re.search(r"\n +1 +base-s1 +[\d.]+ +chg-s1 ",
                                                                                  shown), shown


def test_repeated_seeds_refuse_what_cannot_be_paired_in_one_line(tmp_path):
    root, _ = seeded(tmp_path)
    cases = {
        (("chg-s42",), ("base-s42", "base-s1")): r"seed 1 has a baseline run \(base-s1\) but no experiment run",
        (("chg-s42", "base-s1"), ("base-s42", "chg-s1")): r"chg-s1 differs from base-s42 in more than the seed "
                                                          r"\(statefarm.head.dropout: 0.5 -> 0.3\)",
        ((), ("base-s42", "base-s1")): r"Put the change's runs before -b",
    }
    for (experiments, baselines), message in cases.items():
        with pytest.raises(ConfigError, match=message):
            compare.run("statefarm", list(experiments), list(baselines), root)
    mismatched = repo(tmp_path / "other", {"b": (FULL, PARAMS), "c": (shifted(FULL, [0] * 5, seed=7), PARAMS),
                                           "b1": (FULL, with_params(seed=1)), "c1": (FULL, with_params(seed=1))})
    with pytest.raises(ConfigError, match=r"seed 42: c's folds hold other rows than b's"):
        compare.run("statefarm", ["c", "c1"], ["b", "b1"], mismatched)


def test_the_command_line_takes_each_sides_runs():
    args = cli._parser().parse_args(["compare", "statefarm", "chg-s1", "chg-s2", "-b", "base-s1", "base-s2"])
    assert args.experiments == ["chg-s1", "chg-s2"] and args.baseline == ["base-s1", "base-s2"]
    args = cli._parser().parse_args(["compare", "statefarm", "drop03", "-b", "quick-base"])
    assert args.experiments == ["drop03"] and args.baseline == ["quick-base"]
    assert cli.main(["compare", "--all", "statefarm", "-b", "a", "b"]) != 0


def on_gpu(cv: dict) -> dict:
    """The same run, its members computed on a GPU (as stages record a cuda device)."""
    return {**copy.deepcopy(cv), "environments": [{"torch": "2.14.1", "device": "cuda", "cpu": "AMD EPYC",
                                                   "gpu": "NVIDIA H100 80GB HBM3"}]}


def test_compare_notes_once_that_a_gpu_run_carries_run_to_run_noise(tmp_path):
    """No cuDNN determinism is set: on a GPU the same params differ from run to run at the float level, which adds
    to the spread a change must beat. One note, only when a run says it used one."""
    change = shifted(FULL, [-0.01, 0.0, -0.02, 0.01, -0.01])
    cpu = compare.run("statefarm", ["workspace"], "base", repo(tmp_path / "cpu", {"base": (FULL, PARAMS)}, change))
    assert "GPU" not in cpu
    shown = compare.run("statefarm", ["workspace"], "base",
                        repo(tmp_path / "gpu", {"base": (on_gpu(FULL), PARAMS)}, on_gpu(change)))
    flat = " ".join(shown.split())
    assert flat.count("run-to-run") == 1, shown
    assert "base and workspace ran on a GPU" in flat and "differ at the float level" in flat
    seeds = compare.run("statefarm", ["c-s1", "c-s2"], ["b-s1", "b-s2"], repo(tmp_path / "seeds", {
        "b-s1": (on_gpu(shifted(FULL, [0] * 5, 1)), with_params(seed=1)),
        "b-s2": (shifted(FULL, [0] * 5, 2), with_params(seed=2)),
        "c-s1": (shifted(FULL, [-0.01] * 5, 1), with_params(seed=1, statefarm={"head": {"dropout": 0.3}})),
        "c-s2": (shifted(FULL, [-0.02] * 5, 2), with_params(seed=2, statefarm={"head": {"dropout": 0.3}}))}))
    assert " ".join(seeds.split()).count("b-s1 ran on a GPU") == 1, seeds
