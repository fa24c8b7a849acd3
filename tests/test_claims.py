"""The demo numbers the README and RESULTS quote are the committed run's: `metrics/` and `dvc.lock` come from one
`dvc repro` of the current code (`benchmarks/demo_repro.py --keep DIR`), so a quoted number cannot go stale
without this failing. (Benchmarks on other data print their own tables; RESULTS dates each.)"""

import json
import re

from conftest import REPO


def _committed(path: str) -> dict:
    return json.loads((REPO / "metrics" / path).read_text())


def test_the_readmes_compare_example_starts_from_the_committed_baseline():
    readme = (REPO / "README.md").read_text()
    m, cv = _committed("statefarm.json"), _committed("statefarm/cv.json")
    row = re.search(r"\n +HEAD +([\d.]+) +([\d.]+) +([\d.]+) +(\S+)\n", readme)
    assert row, "the compare example's HEAD row"
    assert [float(v) for v in row.groups()[:3]] == [round(m[k], 4) for k in ("logloss", "accuracy", "demo_test")]
    assert row[4] == f"{cv['choice']['kind']}+{cv['choice']['method']}"
    for k, fold in _committed("statefarm/cv.json")["folds"].items():
        assert re.search(rf"\n +{k} +{fold['rows']} +{fold['logloss']:.4f} ", readme), f"fold {k}"


def test_results_quotes_the_committed_demo_run():
    text = (REPO / "benchmarks" / "RESULTS.md").read_text()
    section = text[text.index("## The offline demo now"):]
    section = section[:section.index("\n## ")]
    sf, dc, dg = (_committed(f"{c}.json") for c in ("statefarm", "dogscats", "digits"))
    sfc, dcc, dgc = (_committed(f"{c}/cv.json")["choice"] for c in ("statefarm", "dogscats", "digits"))
    for quoted in (f"State Farm CV {sf['logloss']:.4f} ({sfc['kind']}", f"demo test {sf['demo_test']:.4f}",
                   f"Dogs vs Cats CV {dc['logloss']:.4f} ({dcc['kind']}, {dcc['method']})",
                   f"demo test {dc['demo_test']:.4f}", f"digits CV accuracy {dg['accuracy']:.4f} ({dgc['kind']})",
                   f"{dg['demo_test']:.3f}"):
        assert quoted in section, quoted


def test_the_real_photo_headline_is_the_committed_benchmark_run():
    """docs/scores.md's real-photo figures and RESULTS' row come from `finetune_pays.py --only photos --seed 2
    --json benchmarks/results/finetune_pays_photos_seed2.json`, committed beside them (a run takes 8 minutes)."""
    from finetune_pays import results_row

    run = json.loads((REPO / "benchmarks" / "results" / "finetune_pays_photos_seed2.json").read_text())[0]
    sub = run["test"]["submission"]
    assert run["check"] == "photos" and run["seed"] == 2
    assert results_row(run) in (REPO / "benchmarks" / "RESULTS.md").read_text()
    scores = re.sub(r"\s+", " ", (REPO / "docs" / "scores.md").read_text())
    assert (f"scores CV log loss {run['cv']:.3f}, and on the unseen drivers test log loss {sub['logloss']:.3f} and "
            f"accuracy {sub['accuracy']:.3f}") in scores
