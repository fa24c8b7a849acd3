"""`dvc repro` end to end on a copy of this repository with tiny params: both submissions, committable metrics,
what each stage prints, offline plots, a no-op re-run, an experiment compared with its baseline (also from a
fresh clone), and submissions refused when they come from the demo or are stale."""

import json
import re
import sys

import pandas as pd
import pytest
import yaml

from conftest import make_project, sh, tiny_params
from pipeline.core.competitions import get_competition
from pipeline.scoring.submission import read_sample, validate_submission


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project after its first `dvc repro`, committed as the baseline (dvc.lock and metrics/, as the
    README says); also what `git status` showed before that commit."""
    root = tmp_path_factory.mktemp("project")
    env = make_project(root, tiny_params(folds=[0, 1]))
    out = repro(root, env)
    status = sh(["git", "status", "--porcelain", "--untracked-files=all"], root, env).stdout
    sh(GIT + ["add", "dvc.lock", "metrics"], root, env)
    sh(GIT + ["commit", "-qm", "baseline"], root, env)
    return root, env, out, status


def repro(root, env) -> str:
    result = sh(DVC + ["repro"], root, env)
    return result.stdout + result.stderr


def test_repro_writes_both_valid_submissions_and_small_committable_metrics(project):
    root, env, first, status = project
    assert {"download@dogscats", "ensemble@statefarm", "finetune@statefarm-main-1", "curves@dogscats", "report@statefarm",
            "summary"} <= ran(first)
    for name in ("dogscats", "statefarm"):
        comp = get_competition(name)
        sub = pd.read_csv(root / "submissions" / name / "submission.csv", dtype={comp.id_column: str})
        validate_submission(comp, sub, read_sample(comp, root / "data" / name / "raw"))
    shown = json.loads(sh(DVC + ["metrics", "show", "--json"], root, env).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert set(metrics) == {"metrics/dogscats.json", "metrics/statefarm.json"}, "only the top-level metrics"
    for name in ("dogscats", "statefarm"):
        top = metrics[f"metrics/{name}.json"]["data"]
        assert top["logloss"] > 0 and top["demo_test"] > 0 and len(top) <= 4
    shown = sh(DVC + ["metrics", "show"], root, env).stdout
    assert max(map(len, shown.splitlines())) <= 100, f"`dvc metrics show` fits a terminal:\n{shown}"
    # Everything else is git-ignored; the metrics are small files for git, beside dvc.lock.
    changed = {line[3:] for line in status.splitlines()}
    assert "dvc.lock" in changed and all(p == "dvc.lock" or p.startswith("metrics/") for p in changed), status
    assert "metrics/statefarm/cv.json" in changed and "metrics/statefarm/main/head/fold1.json" in changed
    assert "metrics/statefarm/cut/finetune/fold1.json" in changed, "every model's stages ran"
    assert all((root / p).stat().st_size < 20_000 for p in changed if p.startswith("metrics/"))


def test_each_stage_says_what_it_did_and_repro_ends_with_a_summary_table(project):
    _, _, out, _ = project
    assert re.search(r"head@statefarm-main:\n  fold 0: val log loss \d\.\d{4}, accuracy [\d.]+ on \d+ rows, after "
                     r"epoch 3.*\n  fold 1: val log loss", out)
    assert "wrote models/statefarm/main/head, metrics/statefarm/main/head, dvclive/statefarm/main/head" in out
    assert re.search(r"finetune@dogscats-main-0: val log loss \d\.\d{4}, .*, after epoch 2 \(the last, kept\), averaged "
                     r"over 2 test-time views \(identity, hflip\); ", out), "why it differs from the last epoch's line"
    assert re.search(r"features@statefarm-cut: \d+x\d+x\d+ features from test_resnet cut at level 2", out)
    assert re.search(r"ensemble@dogscats: CV log loss \d\.\d{4}, accuracy", out)
    assert "wrote submissions/dogscats/submission.csv, submissions/dogscats/oof.csv, metrics/dogscats.json" in out
    assert len(re.findall(r"  took \d+\.\d s", out)) >= 20
    table = out[out.rindex("Running stage 'summary'"):]
    assert "Scores (cross-validated" in table and "Stage wall times" in table
    assert re.search(r"statefarm +logloss +\d\.\d{4} +\d\.\d{4} +[\d.]+ +\d\.\d{4} +"
                     r"(head|finetune|both|weighted)\+(none|temperature|clip) +demo +yes\n", table), table
    assert re.search(r"statefarm +finetune +4 +\d+\.\d", table), "per-fold stages summed per kind (2 models)"


def test_plots_render_offline_with_all_folds_in_one_picture_and_the_report(project):
    root, env, _, _ = project
    sh(DVC + ["plots", "show"], root, env)
    html = (root / "dvc_plots" / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert all((root / "dvc_plots" / src).is_file() for src in images)
    for comp in ("dogscats", "statefarm"):  # the learning curves, and the report's pictures
        assert any(f"plots_{comp}_learning_curves.png" in src for src in images), images
        assert any(f"reports_{comp}_figures_confusion.png" in src for src in images), images
    assert "<script" not in html and "http" not in html, "nothing to fetch: the page renders offline"


def test_noop_repro_runs_only_the_input_checks(project):
    root, env, _, _ = project
    assert ran(repro(root, env)) == {"inputs"}


def test_an_experiment_compares_fold_by_fold_and_per_driver_against_the_baseline(project):
    """The README's loop: baseline committed, `dvc exp run -S ...`, then `dvc metrics diff` and `pipeline compare`."""
    root, env, _, _ = project
    out = sh(DVC + ["exp", "run", "-n", "drop25", "-S", "statefarm.head.dropout=0.25"], root, env).stdout
    again = ran(out)
    per_fold = {f"finetune@statefarm-{model}-{k}" for model in ("main", "cut") for k in (0, 1)}
    assert {"head@statefarm-main", "head@statefarm-cut", "finetune@statefarm-cut-1", "ensemble@statefarm"} <= again
    assert again <= per_fold | {"head@statefarm-main", "head@statefarm-cut", "ensemble@statefarm",
                                "curves@statefarm", "report@statefarm", "summary",
                                "inputs"}, "no features, no dogscats stage"
    diff = json.loads(sh(DVC + ["metrics", "diff", "HEAD", "--json"], root, env).stdout)
    assert "logloss" in diff["metrics/statefarm.json"] and "metrics/dogscats.json" not in diff

    shown = sh([sys.executable, "-m", "pipeline.cli", "compare", "statefarm", "drop25"], root, env).stdout
    base = json.loads(sh(["git", "show", "HEAD:metrics/statefarm/cv.json"], root, env).stdout)
    exp = json.loads((root / "metrics" / "statefarm" / "cv.json").read_text())
    for k in ("0", "1"):
        change = exp["folds"][k]["logloss"] - base["folds"][k]["logloss"]
        assert re.search(rf"\n +{k} +\d+ +{base['folds'][k]['logloss']:.4f} +{exp['folds'][k]['logloss']:.4f} +"
                         rf"{re.escape(f'{change:+.4f}')}\n", shown), shown
    for driver, g in base["groups"].items():
        assert re.search(rf"\n +{driver} +{g['fold']} +{g['rows']} +{g['logloss']:.4f} ", shown), shown
    assert "Per driver" in shown and "corrected standard error" in shown and "drivers, higher on" in shown


def test_a_fresh_clone_has_the_baseline_to_compare_against(project, tmp_path):
    """No DVC cache, no run: the committed metrics are enough for `dvc metrics`, `dvc exp show` and compare."""
    root, env, _, _ = project
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    env = dict(env, PYTHONPATH=str(clone))
    result = sh(DVC + ["metrics", "diff", "HEAD"], clone, env)
    assert "failed to load" not in result.stdout + result.stderr
    committed = json.loads(sh(["git", "show", "HEAD:metrics/statefarm.json"], root, env).stdout)
    shown = json.loads(sh(DVC + ["exp", "show", "--json"], clone, env).stdout)
    head = next(row for row in shown if row["rev"] != "workspace")
    assert head["data"]["metrics"]["metrics/statefarm.json"]["data"]["logloss"] == committed["logloss"]
    out = sh([sys.executable, "-m", "pipeline.cli", "compare", "statefarm"], clone, env).stdout
    assert "Per fold" in out and "+0.0000" in out


def test_pipeline_submit_refuses_demo_and_stale_submissions(project):
    from pipeline.commands import submit

    root, _, _, _ = project
    reasons = submit.refusals("dogscats", root)
    assert "demo" in reasons[0] and "12500" in reasons[1], reasons
    assert not any("older than" in r for r in reasons), "fresh outputs are not stale"
    original = (root / "params.yaml").read_text()
    code = (root / "pipeline" / "stages" / "ensemble.py").read_text()
    raw = yaml.safe_load(original)
    raw["dogscats"]["head"]["dropout"] = 0.1
    try:
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        stale = submit.refusals("dogscats", root)[-1]
        assert "older than the params" in stale and "head@dogscats-main (params.yaml: dogscats.head)" in stale
        (root / "params.yaml").write_text(original)
        (root / "pipeline" / "stages" / "ensemble.py").write_text(code + "# changed\n")
        stale = submit.refusals("dogscats", root)[-1]
        assert "ensemble@dogscats (pipeline/stages/ensemble.py)" in stale
    finally:
        (root / "params.yaml").write_text(original)
        (root / "pipeline" / "stages" / "ensemble.py").write_text(code)
    # one inputs stage checks every competition: another competition's replaced archive is not this one's business
    other = root / "data" / "inputs" / "statefarm" / "source.json"
    fingerprint = other.read_text()
    try:
        other.write_text('{"source": "file", "md5": "0123", "size": 1}')
        assert not any("older than" in r for r in submit.refusals("dogscats", root))
        # statefarm's own check refreshes its fingerprint (the demo's again): up to date
        assert not any("older than" in r for r in submit.refusals("statefarm", root))
    finally:
        other.write_text(fingerprint)


def test_a_top_level_params_typo_fails_repro_even_when_nothing_else_would_run(project):
    root, env, _, _ = project
    original = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(original + "fodls: [0, 1]\n")
        result = sh([sys.executable, "-m", "dvc", "repro"], root, env, ok=False)
        assert result.returncode != 0
        assert "fodls: unknown top-level key" in result.stdout + result.stderr
    finally:
        (root / "params.yaml").write_text(original)


def test_replacing_a_local_archive_at_the_same_path_reruns_download(project, tmp_path):
    """DVC tracks the archive's content, not the path string in params.yaml."""
    from pipeline.data.demo import write_demo_archive

    root, env, _, _ = project
    comp = get_competition("dogscats")
    demo = tiny_params().comp("dogscats").data.demo
    archive = write_demo_archive(comp, demo, 0, tmp_path / "dogs.zip")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    original = (root / "params.yaml").read_text()
    raw["dogscats"]["data"]["source"] = str(archive)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    target = [sys.executable, "-m", "dvc", "repro", "download@dogscats"]
    try:
        assert "download@dogscats" in ran(sh(target, root, env).stdout)
        assert "download@dogscats" not in ran(sh(target, root, env).stdout), "same content: nothing to do"
        write_demo_archive(comp, demo, 1, archive)  # another archive, same path
        assert "download@dogscats" in ran(sh(target, root, env).stdout)
    finally:
        (root / "params.yaml").write_text(original)


def test_a_second_machine_pulls_features_and_models_instead_of_recomputing_them(project, tmp_path):
    """A DVC remote (a local folder stands in for S3 and the like): `dvc push` from the first machine, then a fresh
    clone pulls and `dvc repro` remakes only the uncached archive and image cache (byte for byte, so nothing after
    them re-runs). The big raw archive and decoded cache are not in DVC's cache at all: disk used once."""
    root, env, _, _ = project
    store = tmp_path / "store"
    sh(GIT + ["stash", "-q"], root, env)  # the committed baseline, as the other machine will clone it
    sh(DVC + ["checkout"], root, env)
    sh(DVC + ["remote", "add", "-d", "shared", str(store)], root, env)
    try:
        sh(DVC + ["push"], root, env)
        cached = {p.name for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()}
        raw_npy = root / "data" / "statefarm" / "cache" / "train.npy"
        assert raw_npy.stat().st_nlink == 1 and not raw_npy.is_symlink()
        clone = tmp_path / "clone"
        sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
        clone_env = dict(env, PYTHONPATH=str(clone))
        sh(DVC + ["remote", "add", "-d", "shared", str(store)], clone, clone_env)
        pulled = sh(DVC + ["pull"], clone, clone_env, ok=False)  # the uncached outputs cannot be pulled: it says so
        shown = pulled.stdout[-3000:] + pulled.stderr[-3000:]
        assert (clone / "models" / "statefarm" / "cut" / "finetune" / "fold1" / "model.safetensors").is_file(), shown
        assert (clone / "data" / "statefarm" / "features" / "main" / "train.npy").is_file()
        assert not (clone / "data" / "statefarm" / "cache").exists(), "not pushed: remade where needed"
        again = ran(repro(clone, clone_env))
        assert again == {"inputs"} | {f"{stage}@{comp}" for stage in ("download", "prepare")
                                      for comp in ("dogscats", "statefarm")}, again
        assert cached, "the features and models are in DVC's cache"
    finally:
        sh(DVC + ["remote", "remove", "shared"], root, env)


def test_folds_finetuned_side_by_side_outside_dvc_are_recorded_by_dvc_commit(project):
    """The README's recipe for several GPUs: run the finetune stages' command for several folds at once (one per
    GPU), then `dvc commit` records them as `dvc repro` would have, and the next `dvc repro` re-runs none of them.
    (Last in this module: it leaves the project with a changed param.)"""
    import subprocess

    root, env, _, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["statefarm"]["finetune"]["lr"] = 0.02
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = [f"finetune@statefarm-{model}-{k}" for model in ("main", "cut") for k in (0, 1)]
    side_by_side = [subprocess.Popen([sys.executable, "-m", "pipeline.stages.finetune", "statefarm", *s.split("-")[1:]],
                                     cwd=root, env=dict(env, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True) for s in stages]
    for proc in side_by_side:
        assert proc.wait() == 0, proc.stderr.read()[-2000:]
    sh(DVC + ["commit", "-f", *stages], root, env)
    status = sh(DVC + ["status", *stages], root, env).stdout
    assert "changed" not in status, status
    again = ran(repro(root, env))
    assert not again & set(stages) and "ensemble@statefarm" in again, again
