"""`dvc repro` end to end on a copy of this repository with tiny params: both submissions, metrics, a no-op
re-run, and a head-param change that re-runs nothing upstream of the head."""

import json
import re
import sys

import pandas as pd
import pytest
import yaml

from conftest import make_project, sh, tiny_params
from pipeline.competitions import get_competition
from pipeline.submission import read_sample, validate_submission


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    env = make_project(root, tiny_params(folds=[0, 1]))
    return root, env, repro(root, env)


def repro(root, env) -> str:
    result = sh([sys.executable, "-m", "dvc", "repro"], root, env)
    return result.stdout + result.stderr


def test_repro_writes_both_valid_submissions_and_metrics(project):
    root, env, first = project
    assert {"download@dogscats", "ensemble@statefarm", "finetune@statefarm-1"} <= ran(first)
    for name in ("dogscats", "statefarm"):
        comp = get_competition(name)
        sub = pd.read_csv(root / "submissions" / f"{name}.csv", dtype={comp.id_column: str})
        validate_submission(comp, sub, read_sample(comp, root / "data" / name / "raw"))
    shown = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env).stdout)
    metrics = next(iter(shown.values()))["data"]
    for name in ("dogscats", "statefarm"):
        assert metrics[f"metrics/{name}.json"]["data"]["logloss"] > 0
        assert "finetune_logloss" in metrics[f"metrics/{name}.json"]["data"]["folds"]["1"]
        assert metrics[f"metrics/{name}/head/fold0.json"]["data"]["accuracy"] >= 0
    status = sh(["git", "status", "--porcelain"], root, env).stdout
    assert status.strip() in ("?? dvc.lock", "M dvc.lock"), f"outputs must be git-ignored:\n{status}"


def test_noop_repro_runs_only_the_input_checks(project):
    root, env, _ = project
    assert ran(repro(root, env)) == {"inputs@dogscats", "inputs@statefarm"}


def test_head_param_change_reruns_only_downstream_of_the_head(project):
    root, env, _ = project
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["statefarm"]["head"]["dropout"] = 0.25
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    again = ran(repro(root, env))
    assert {"head@statefarm-0", "head@statefarm-1"} <= again
    assert again <= {"head@statefarm-0", "head@statefarm-1", "finetune@statefarm-0", "finetune@statefarm-1",
                     "ensemble@statefarm", "inputs@dogscats", "inputs@statefarm"}


def test_exp_show_reads_the_metrics_of_a_committed_run(project):
    """Metrics are git-ignored but DVC-cached: `dvc exp show` still finds them for every commit."""
    root, env, _ = project
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    sh(git + ["add", "dvc.lock", "params.yaml"], root, env)
    sh(git + ["commit", "-qm", "run"], root, env)
    sh(["git", "clean", "-fdxq", "metrics"], root, env)  # as in a fresh clone: only DVC's cache has them
    shown = json.loads(sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], root, env).stdout)
    head = next(row for row in shown if row["rev"] != "workspace")
    metrics = head["data"]["metrics"]
    assert metrics["metrics/statefarm.json"]["data"]["logloss"] > 0


def test_a_top_level_params_typo_fails_repro_even_when_nothing_else_would_run(project):
    root, env, _ = project
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
    from pipeline.demo import write_demo_archive

    root, env, _ = project
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
