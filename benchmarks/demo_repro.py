"""Benchmark: the offline demo end to end, as a user runs it from a fresh clone.

Times, in one run on this machine: a full `dvc repro` (target: <= 10 minutes on 2 cores), a no-op `dvc repro`
(target: <= 5 s, and within 1.5x a bare `dvc status`; only the always-run `inputs` check runs), a re-run after
changing a head param (must reuse download, folds, prepare, features), and the README's quick-mode recipe (a head
idea under 1 minute, a finetune idea under 3, paired by `pipeline compare`).
The baseline measured in the same run is one interpreter start with the pipeline imported, the fixed cost every
DVC stage pays; ratios are printed against it and against the full run.

    python benchmarks/demo_repro.py [--keep DIR]

With --keep, DIR/baseline/ holds the full run's dvc.lock and metrics/ (the files to commit after changing defaults).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def timed(args, cwd) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stdout + result.stderr


def stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def quick_mode(work: Path, dvc: list[str]) -> tuple:
    """The README's quick-mode recipe from the shipped params' full run (committed as the baseline): the quick
    baseline once, then a head idea and a finetune idea, each from `dvc exp apply quick-base`, each up to State
    Farm's score. Returns the seconds, and whether `pipeline compare` paired both ideas with the baseline."""
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    # back from the head change to the full run: its own lock, not the committed one, whose outputs another CPU's
    # floating point may have computed differently (then `dvc checkout` finds them missing from this run's cache)
    timed(["git", "checkout", "params.yaml"], work)
    shutil.copy(work / "baseline" / "dvc.lock", work / "dvc.lock")
    shutil.rmtree(work / "metrics")
    shutil.copytree(work / "baseline" / "metrics", work / "metrics")
    timed(dvc + ["checkout"], work)
    with open(work / ".git" / "info" / "exclude", "a") as f:
        f.write("/baseline/\n")
    timed(git + ["add", "-A"], work)
    timed(git + ["commit", "-qm", "baseline"], work)
    base_s, _ = timed(dvc + ["exp", "run", "-n", "quick-base", "-S", "folds=[0]", "-S", "subsample=0.5"], work)
    ideas = []
    for name, change in (("idea-head", "statefarm.head.dropout=0.3"), ("idea-finetune", "statefarm.finetune.lr=0.0005")):
        apply_s, _ = timed(dvc + ["exp", "apply", "quick-base"], work)
        run_s, out = timed(dvc + ["exp", "run", "-n", name, "-S", change, "ensemble@statefarm"], work)
        ideas.append((apply_s, run_s, stages(out)))
    _, shown = timed([sys.executable, "-m", "pipeline.cli", "compare", "statefarm", "idea-head", "idea-finetune",
                      "-b", "quick-base"], work)
    per_fold = shown.split("Per fold", 1)[-1].splitlines()[1:3]  # its header and fold 0's row
    paired = len(per_fold) == 2 and all(name in per_fold[0] for name in ("quick-base", "idea-head", "idea-finetune"))
    return base_s, *ideas, paired and per_fold[1].split()[0] == "0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="clone into this folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="demo-bench-"))
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    dvc = [sys.executable, "-m", "dvc"]

    startup, _ = timed([sys.executable, "-c", "import pipeline.stages.finetune"], work)
    full, out = timed(dvc + ["repro", "-f"], work)
    n_stages = len(stages(out))
    logs = [json.loads(p.read_text()) for p in (work / "logs" / "stages").glob("*.json")]
    started = sum(log["seconds"] - log["work_seconds"] for log in logs)  # each stage's own start-up and imports
    shipped = yaml.safe_load((work / "params.yaml").read_text())["competitions"]
    metrics = {c: yaml.safe_load((work / "metrics" / f"{c}.json").read_text()) for c in shipped}
    chosen = {c: json.loads((work / "metrics" / c / "cv.json").read_text()) for c in shipped}  # the full run's
    # what a maintainer commits after a change of defaults: the full run's lock file and metrics
    shutil.copytree(work / "metrics", work / "baseline" / "metrics")
    shutil.copy(work / "dvc.lock", work / "baseline" / "dvc.lock")
    noop, out_noop = timed(dvc + ["repro"], work)
    status, _ = timed(dvc + ["status"], work)  # issue 20: a no-op repro within 1.5x of this
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["statefarm"]["head"]["dropout"] = round(params["statefarm"]["head"]["dropout"] / 2, 3)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    change, out_change = timed(dvc + ["repro"], work)
    rerun = stages(out_change)
    upstream = [s for s in rerun if s.split("@")[0] in ("download", "folds", "prepare", "features")]
    quick = quick_mode(work, dvc)

    rows = [
        ("interpreter start + imports (baseline)", startup, 1.0, "-"),
        (f"full dvc repro ({n_stages} stages)", full, full / startup, "<= 600 s: " + ("ok" if full <= 600 else "MISSED")),
        ("no-op dvc repro (only the inputs check)", noop, noop / startup,
         "<= 5 s: " + ("ok" if noop <= 5 and stages(out_noop) == ["inputs"] else "MISSED")),
        ("bare dvc status", status, status / startup,
         f"no-op within 1.5x: {noop / status:.1f}x " + ("ok" if noop <= 1.5 * status else "MISSED")),
        (f"head param changed ({len(rerun)} stages)", change, change / startup,
         "no upstream re-run: " + ("ok" if not upstream else f"MISSED {upstream}")),
    ]
    base_s, (head_apply, head_s, head_stages), (ft_apply, ft_s, ft_stages), paired = quick
    rows += [
        ("quick baseline (dvc exp run, 2 params)", base_s, base_s / startup, "once per baseline commit"),
        (f"quick head change ({len(head_stages)} stages, with apply)", head_apply + head_s,
         (head_apply + head_s) / startup, "< 60 s: " + ("ok" if head_apply + head_s < 60 else "MISSED")),
        (f"quick finetune change ({len(ft_stages)} stages, with apply)", ft_apply + ft_s,
         (ft_apply + ft_s) / startup, "< 180 s: " + ("ok" if ft_apply + ft_s < 180 else "MISSED")),
    ]
    print(f"{'what':45s} {'seconds':>9s} {'x baseline':>11s}  target")
    for name, seconds, ratio, target in rows:
        print(f"{name:45s} {seconds:9.1f} {ratio:11.1f}  {target}")
    print(f"stage start-up share of the full run: {started / full:.0%} ({started:.0f} s over {len(logs)} stages, as "
          f"each measured its own; at most {n_stages * startup / full:.0%} if every stage paid the baseline)")
    print("pipeline compare paired the quick runs fold by fold:", "yes" if paired else "NO")
    for comp, m in metrics.items():
        cv = chosen[comp]
        demo = ", ".join(f"{key} {value:.4f}" for key, value in cv["demo_test"].items())
        print(f"{comp}: CV logloss {m['logloss']:.4f}, accuracy {m['accuracy']:.4f} ({cv['choice']['kind']}, "
              f"{cv['choice']['method']}); demo test {demo}")
    if not args.keep:
        print(f"(clone left in {work}; delete it when done)")


if __name__ == "__main__":
    main()
