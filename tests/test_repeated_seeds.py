"""The README's repeated-seeds recipe, end to end with real `dvc exp run`s on a tiny project: the baseline's
other seeds, the change at every seed, then one `pipeline compare` with a baseline per seed. (Each run stops at the
competition's score, `ensemble@dogscats`, to keep the suite short; the recipe is otherwise the README's.)"""

from __future__ import annotations

import re

from conftest import make_project, sh, tiny_raw
from pipeline.core.config import parse_params


def test_the_readme_recipe_pairs_each_seed_and_applies_the_repeated_test(tmp_path):
    raw = tiny_raw(competitions=["dogscats"], models=["main"], fold_count=2, folds=[0, 1],
                   **{"dogscats.models": {"main": {}}})  # two folds: the fewest stages a run can have
    raw.pop("statefarm")
    env = make_project(tmp_path, parse_params(raw, "tiny params"))
    dvc = ["dvc"]
    sh(dvc + ["repro", "ensemble@dogscats"], tmp_path, env)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    sh(git + ["add", "-A"], tmp_path, env)
    sh(git + ["commit", "-qm", "baseline"], tmp_path, env)
    for s in (1,):  # the baseline's other seed, first: exp run leaves its params in params.yaml
        sh(dvc + ["exp", "run", "-n", f"base-s{s}", "-S", f"seed={s}", "ensemble@dogscats"], tmp_path, env)
    for s in (0, 1):  # the change at the shipped seed (the tiny params' 0) and the other
        sh(dvc + ["exp", "run", "-n", f"drop-s{s}", "-S", f"seed={s}", "-S", "dogscats.head.dropout=0.3",
                  "ensemble@dogscats"], tmp_path, env)
    out = sh(["pipeline", "compare", "dogscats", "drop-s0", "drop-s1", "-b", "HEAD", "base-s1"], tmp_path, env).stdout
    flat = " ".join(out.split())
    assert "2 seeds, each experiment paired with the baseline run of its seed" in flat, out
    assert "2 seeds x 2 folds of 2 (corrected repeated k-fold test)" in flat, out  # every fold of both seeds
    alone = sh(["pipeline", "compare", "dogscats", "drop-s0", "-b", "HEAD", "base-s1"], tmp_path, env, ok=False)
    assert alone.returncode != 0 and len(alone.stderr.strip().splitlines()) == 1, alone.stderr  # seed 1 unpaired
