"""benchmarks/full_size.py --gpu, the real recipe it would run on a GPU, run through on this CPU at a tiny size
(issue 18: the path must work before a GPU is lent to measure it)."""

import json
import subprocess
import sys

import pandas as pd
import yaml

from conftest import REPO


def test_the_gpu_path_runs_the_shipped_pretrained_recipe_end_to_end(tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, str(REPO / "benchmarks" / "full_size.py"), "--gpu", "--comp", "statefarm",
               "--scales", "0.002", "--image-size", "32", "40", "--cache-dir", str(tmp_path / "cache"),
               "--keep", str(tmp_path / "work"), "--json", str(out),
               # fewer folds and steps than shipped, to fit the suite; the backbone and weights stay the shipped ones
               "-S", "fold_count=2", "-S", "folds=[0,1]", "-S", "statefarm.finetune.min_steps=2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    [result] = json.loads(out.read_text())
    run = result["big"]
    assert result["small"] is None and run["gpu"] and (run["train"], run["test"]) == (45, 159)
    stages = {row["stage"]: row for row in run["stages"]}
    lock = yaml.safe_load((tmp_path / "work" / "statefarm-0.002" / "dvc.lock").read_text())["stages"]
    assert set(stages) == set(lock), "every stage the project ran was metered"
    assert all(row["rc"] == 0 for row in stages.values())
    finetunes = [row for name, row in stages.items() if name.startswith("finetune@")]
    assert len(finetunes) == 2 and all(row["input_wait"] is not None for row in finetunes), \
        "finetuning's wait on the loader is measured (the GPU run's second target)"

    project = tmp_path / "work" / "statefarm-0.002"
    params = yaml.safe_load((project / "params.yaml").read_text())
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["statefarm"]["features"]["backbone"] == shipped["statefarm"]["features"]["backbone"]
    assert params["statefarm"]["features"]["pretrained"] is True and params["device"] == "auto"
    weights = json.loads((project / "data" / "inputs" / "statefarm" / "weights-main.json").read_text())
    assert weights["weights"] == "package", "the pretrained weights came from the installed package"

    submission = pd.read_csv(project / "submissions" / "statefarm" / "submission.csv")
    assert list(submission.columns) == ["img"] + [f"c{i}" for i in range(10)] and len(submission) == 159
    assert abs(submission.iloc[:, 1:].sum(axis=1) - 1).max() < 1e-4
    assert "statefarm (--gpu): 45 + 159 rows" in done.stdout
    assert "target on one H200-class GPU: 600 s" in done.stdout
