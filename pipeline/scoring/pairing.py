"""Two runs' cross-validated scores paired only like with like, and the corrected t-test that tells a change from
noise (`pipeline compare`, `pipeline compare --all`).

A run is its `metrics/<comp>/cv.json` (`pipeline.stages.ensemble`): `run` holds the scored `folds`, `fold_count`
and `subsample`; each fold its rows' hash, the ensemble's cross-fitted score and choice, and each member's own
score (`<model>/<stage>_logloss`, before the ensemble). Two runs' fold scores are paired only when they measure the
same thing:
- the same split (`fold_count`, and the seed: each common fold's `rows_md5`); else nothing is paired per fold;
- the same scored `folds`: a fold's ensemble is chosen on the other scored folds (one fold alone is forced to the
  finetuned networks as they are, `finetune+none`), so with other folds its ensemble score changes by procedure.
  Then only the members' own scores are paired, on the folds both scored;
- another `subsample` is paired but noted: its effect is part of the change.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.scoring.runs import Run



def seeds_advice(comp: str = "<comp>") -> str:
    """What to do about a change that cannot be told from noise: more seeds, the same on both sides."""
    return ("to decide, run the baseline and the change again with the same other seeds (`-S seed=N` on both sides) "
            f"and compare them together: `pipeline compare {comp} CHANGE-s1 CHANGE-s2 -b BASE-s1 BASE-s2` (README: "
            "repeated seeds)")


def settings(run: Run) -> dict:
    """What the run scored: `folds`, `fold_count` and `subsample` (a cv.json older than quick mode has no `run`:
    it scored every fold of its split on all the images)."""
    folds, given = run.cv.get("folds", {}), run.cv.get("run", {})
    return {"folds": sorted(map(int, given.get("folds", folds))),
            "fold_count": int(given.get("fold_count", len(folds))),
            "subsample": float(given.get("subsample", 1.0))}


def same_folds(a: Run, b: Run) -> bool:
    """Whether the folds both runs scored hold the same rows (another seed or fold count gives other folds)."""
    fa, fb = a.cv["folds"], b.cv["folds"]
    common = set(fa) & set(fb)
    return bool(common) and all(fa[k].get("rows_md5") == fb[k].get("rows_md5") is not None for k in common)


def unpaired(base: Run, run: Run) -> str | None:
    """Why no fold of the two runs can be paired, in one line; None when their common folds hold the same rows."""
    a, b = settings(base), settings(run)
    if a["fold_count"] != b["fold_count"]:
        return (f"{run.name} split the rows into {b['fold_count']} folds, {base.name} into {a['fold_count']}: no "
                "fold holds the same rows, so nothing is paired per fold. Compare the overall score, or make both "
                "with one fold_count.")
    if not set(a["folds"]) & set(b["folds"]):
        return (f"{base.name} scored folds {a['folds']}, {run.name} folds {b['folds']}: none in common, so nothing "
                f"is paired per fold. Make the baseline with `-S 'folds={b['folds']}'`.")
    if not same_folds(base, run):
        return (f"{run.name}'s folds hold other rows than {base.name}'s (another seed): nothing is paired per fold. "
                f"Make the baseline with {run.name}'s seed (`dvc exp run -S seed=N`) and compare those two, or "
                "compare the overall score.")
    return None


def same_procedure(base: Run, run: Run) -> bool:
    """Whether both ensembles were chosen the same way: on the same scored folds, or each on all of its split's."""
    a, b = settings(base), settings(run)
    return a["folds"] == b["folds"] or all(s["folds"] == list(range(s["fold_count"])) for s in (a, b))


def procedure_note(base: Run, run: Run) -> str | None:
    """Why the ensembles' fold scores are not paired though the split is the same: other scored folds."""
    a, b = settings(base)["folds"], settings(run)["folds"]
    if same_procedure(base, run):
        return None
    common = sorted(set(a) & set(b))
    return (f"{base.name} scored folds {a}, {run.name} folds {b}: a fold's ensemble is chosen on the other scored "
            "folds (on one fold alone it is the finetuned networks as they are), so the ensembles' fold scores "
            f"differ by procedure, not only by the change, and are not paired. Paired instead: each member's own "
            f"log loss on folds {common}. To compare ensembles, make both runs with the same `folds`.")


def quick_note(base: Run, run: Run) -> str | None:
    """Two runs that learnt from other shares of the images: paired, but the share is part of the change."""
    a, b = settings(base)["subsample"], settings(run)["subsample"]
    if a == b:
        return None
    return (f"Note: {base.name} learnt from {a:.0%} of each fold's training images, {run.name} from {b:.0%}: "
            f"the change includes that. To see the change alone, make the baseline the same way "
            f"(`dvc exp run -S subsample={b:g}` with the same folds) on the baseline commit.")


def gpu_note(runs: list[Run]) -> str | None:
    """Said once when any run's members were computed on a GPU (an environment with a cuda device): no cuDNN
    determinism is set, so there the same params differ from run to run at the float level, and that noise adds to
    the spread a change must beat. On a CPU the same params give the same numbers."""
    gpu = [r.name for r in runs if any(e.get("device") == "cuda" for e in r.cv.get("environments") or [])]
    if not gpu:
        return None
    names = " and ".join([", ".join(gpu[:-1]), gpu[-1]] if len(gpu) > 1 else gpu)
    return (f"Note: {names} ran on a GPU, where two runs of the same params differ at the float level (no cuDNN "
            "determinism is set): that run-to-run noise adds to the spread of each change below.")


def paired_table(base: Run, runs: list[Run], key: str, extra: tuple[str, ...], label: str,
                 score: str = "logloss") -> pd.DataFrame:
    """Rows of cv.json's `key` (folds or groups) present in every run with a `score` (the competition's metric):
    each run's score, and its change against the baseline."""
    def value(r: Run, k: str) -> float:
        v = r.cv[key][k].get(score)
        return math.nan if v is None else float(v)  # e.g. ROC AUC of a group of one class

    common = [k for k in base.cv[key] if all(k in r.cv[key] for r in runs)]
    rows = []
    for k in common:
        row = {label: k, **{c: base.cv[key][k][c] for c in extra}, base.name: value(base, k)}
        for r in runs:
            row[r.name] = value(r, k)
            row[f"change {r.name}"] = value(r, k) - value(base, k)
        rows.append(row)
    return pd.DataFrame(rows).dropna() if rows else pd.DataFrame(rows)


def members(run: Run, fold: str) -> dict[str, float]:
    """Each member's own log loss on a fold, by member name (`<model>/<stage>`)."""
    return {k.removesuffix("_logloss"): float(v) for k, v in run.cv["folds"][fold].items()
            if k.endswith("_logloss") and "/" in k and v is not None}


def member_changes(pairs: list[tuple[Run, Run]]) -> pd.DataFrame:
    """Per pair (its index), per fold both scored, per member both have: the two log losses and the change."""
    rows = [{"pair": i, "fold": fold, "rows": base.cv["folds"][fold]["rows"], "member": m, "base": mine[m],
             "run": theirs[m], "change": theirs[m] - mine[m]}
            for i, (base, run) in enumerate(pairs) for fold in base.cv["folds"] if fold in run.cv["folds"]
            for mine, theirs in [(members(base, fold), members(run, fold))] for m in mine if m in theirs]
    return pd.DataFrame(rows, columns=["pair", "fold", "rows", "member", "base", "run", "change"])


def unshared_members(base: Run, run: Run) -> str | None:
    """The members only one of the two runs has (another model list): said, not compared."""
    have = [{m for f in r.cv["folds"] for m in members(r, f)} for r in (base, run)]
    only = [(r.name, sorted(h - other)) for r, h, other in ((base, *have), (run, *have[::-1])) if h - other]
    return ("; ".join(f"only {name} has {', '.join(ms)}" for name, ms in only) + " (not compared)") if only else None


def paired_test(diffs: np.ndarray, fold_count: int, higher_is_better: bool = False) -> dict:
    """`fold_verdict`'s numbers: mean, sd, corrected se, t, the t needed, and the verdict (better, worse, noise);
    t is None with fewer than two paired folds."""
    n = len(diffs)
    mean = float(np.mean(diffs))
    if n < 2:
        return {"mean": mean, "sd": None, "se": None, "t": None, "needed": None, "verdict": "noise"}
    sd = float(diffs.std(ddof=1))
    se = sd * math.sqrt(1 / n + 1 / (fold_count - 1))  # n_test / n_train of a k-fold split: 1 / (k - 1)
    t = abs(mean) / se if se > 0 else (math.inf if mean else 0.0)
    needed = float(stats.t.ppf(0.975, n - 1))
    verdict = "noise" if t < needed else ("better" if (mean > 0) == higher_is_better else "worse")
    return {"mean": mean, "sd": sd, "se": se, "t": t, "needed": needed, "verdict": verdict}


def fold_verdict(diffs: np.ndarray, weights: np.ndarray, fold_count: int, higher_is_better: bool = False,
                 advice: str | None = None) -> str:
    """The fold-paired change of the score (log loss unless said otherwise), and whether it stands out from the
    noise.

    Cross-validation's fold differences are correlated (each pair of training sets shares most rows), so the
    naive standard error is too small: the corrected resampled t-test (Nadeau & Bengio, 2003) scales the variance
    of n paired results by 1/n + n_test/n_train instead of 1/n, with n_test/n_train = 1/(k - 1) for a split into
    k = `fold_count` folds (however many of them were scored), and compares with Student's t at 95% (two-sided) on
    n - 1 degrees of freedom. With r seeds (r splits) the diffs hold n = r k results: the corrected repeated
    k-fold test (Bouckaert & Frank, 2004), 1/(r k) + 1/(k - 1). The test takes the plain mean of the fold
    differences, as those tests do (a row-weighted mean over an unweighted spread would let one big fold pass for
    a consistent change); the change of the overall, row-weighted score is shown beside it. `advice` is what to
    do when the change cannot be told from noise.
    """
    advice = advice or seeds_advice()
    n = len(diffs)
    overall = float(np.average(diffs, weights=weights))
    counts = f"lower on {int((diffs < 0).sum())}/{n} folds, higher on {int((diffs > 0).sum())}/{n}"
    if not np.any(diffs):
        return f"identical on every fold ({counts})"
    test = paired_test(diffs, fold_count, higher_is_better)
    if test["t"] is None:
        return f"change {test['mean']:+.4f} on a single fold: no spread to judge it by; {advice}"
    if test["verdict"] != "noise":
        judged = f"likely {test['verdict']}: {test['t']:.1f} corrected standard errors from zero"
    else:
        judged = (f"not distinguishable from noise: {test['t']:.1f} corrected standard errors from zero, "
                  f"{test['needed']:.1f} needed; {advice}")
    return (f"mean fold change {test['mean']:+.4f} (overall, row-weighted: {overall:+.4f}), spread (sd) "
            f"{test['sd']:.4f}, corrected standard error {test['se']:.4f}; {counts} -> {judged}")


def group_counts(diffs: np.ndarray, weights: np.ndarray, noun: str) -> str:
    """Per group, only a description: a fold's groups share one model, so they are not independent samples."""
    return (f"mean change {np.average(diffs, weights=weights):+.4f}; lower on {int((diffs < 0).sum())}/{len(diffs)} "
            f"{noun}s, higher on {int((diffs > 0).sum())}/{len(diffs)} (does the change help most {noun}s, or one?)")
