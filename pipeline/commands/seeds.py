"""`pipeline compare <comp> CHANGE-s1 CHANGE-s2 ... -b BASE-s1 BASE-s2 ...`: one change judged over repeated seeds.

The seed draws the split, so runs of other seeds never share a fold: each experiment is paired with the baseline
run of its own seed (read from params.yaml at each run's revision), fold by fold, and their folds must hold the
same rows (`rows_md5`). Each side must be one setup run with other seeds (nothing but `seed` differs in
params.yaml), and both sides must score the same folds of the same split. Every seed's paired fold changes,
n = r seeds x the folds each scored, go into the corrected repeated k-fold test (Bouckaert & Frank, 2004:
Nadeau & Bengio's 1/n + 1/(k - 1), k = `fold_count`, on n - 1 degrees of freedom).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.commands.compare import load_run, machine_note, member_block, table, wrapped
from pipeline.core.competitions import get_competition
from pipeline.core.errors import ConfigError
from pipeline.core.gitinfo import changed_params, params_at
from pipeline.scoring.metrics import HIGHER_IS_BETTER
from pipeline.scoring.pairing import (
    Run,
    fold_verdict,
    gpu_note,
    group_counts,
    paired_table,
    procedure_note,
    quick_note,
    settings,
    unpaired,
)


def by_seed(root: Path, side: list[Run], label: str) -> dict[int, Run]:
    """A side's runs by their seed; refused when a seed is missing or repeated, or when they differ in more."""
    params = {r.name: params_at(root, r.commit) for r in side}
    found: dict[int, Run] = {}
    for r in side:
        seed = params[r.name].get("seed")
        if seed is None:
            raise ConfigError(f"cannot tell {r.name}'s seed: it has no params.yaml with a top-level `seed`; compare "
                              "runs made by `dvc exp run -S seed=N` (README: repeated seeds).")
        if seed in found:
            raise ConfigError(f"{found[seed].name} and {r.name} both ran with seed {seed}; give one {label} run per "
                              "seed.")
        others = [c for c in changed_params(params[side[0].name], params[r.name]) if not c.startswith("seed: ")]
        if others:
            raise ConfigError(f"{r.name} differs from {side[0].name} in more than the seed ({'; '.join(others)}): "
                              f"each side must be one setup run with other seeds. Remake it with only "
                              f"`-S seed={seed}` changed (`dvc exp run` leaves its params in params.yaml: run the "
                              "baseline's seeds before the change's).")
        found[seed] = r
    return found


def pair_by_seed(root: Path, comp_name: str, experiments: list[str], baselines: list[str]) -> list[tuple]:
    """(seed, baseline run, experiment run) per seed, in the baselines' order; each pair like with like."""
    bases = by_seed(root, [load_run(root, comp_name, b) for b in baselines], "baseline")
    changes = by_seed(root, [load_run(root, comp_name, e) for e in experiments], "experiment")
    for seed in [*bases, *changes]:
        if seed not in bases or seed not in changes:
            has, lacks = ("baseline", "experiment") if seed in bases else ("experiment", "baseline")
            alone = (bases if seed in bases else changes)[seed].name
            raise ConfigError(f"seed {seed} has a {has} run ({alone}) but no {lacks} run; each seed needs both: "
                              f"make the {lacks} with `-S seed={seed}`, or leave {alone} out.")
    pairs = [(seed, base, changes[seed]) for seed, base in bases.items()]
    for seed, base, change in pairs:
        reason = unpaired(base, change) or procedure_note(base, change)
        if reason:
            raise ConfigError(f"seed {seed}: {reason}")
    return pairs


def _long(pairs: list[tuple], key: str, extra: tuple[str, ...], label: str, score: str) -> pd.DataFrame:
    """paired_table per seed, stacked with a `seed` column and the sides named baseline and experiment."""
    frames = [paired_table(base, [change], key, extra, label, score)
              .rename(columns={base.name: "baseline", change.name: "experiment", f"change {change.name}": "change"})
              for _, base, change in pairs]
    stacked = [f.assign(seed=seed) for (seed, _, _), f in zip(pairs, frames) if len(f)]
    if not stacked:
        return pd.DataFrame()
    out = pd.concat(stacked, ignore_index=True)
    return out[["seed", *(c for c in out.columns if c != "seed")]]


def run(comp_name: str, experiments: list[str], baselines: list[str], root: Path = Path(".")) -> str:
    """The repeated-seeds comparison as text."""
    comp = get_competition(comp_name)
    pairs = pair_by_seed(root, comp_name, experiments, baselines)
    score, higher = comp.metric, HIGHER_IS_BETTER[comp.metric]
    name = "log loss" if score == "logloss" else score
    out = [wrapped(f"{comp_name}: cross-validated {name} ({'higher' if higher else 'lower'} is better), "
                   f"{len(pairs)} seeds, each experiment paired with the baseline run of its seed"),
           pd.DataFrame([{"seed": seed, "baseline": b.name, f"baseline {name}": b.metrics.get(score),
                          "experiment": e.name, f"experiment {name}": e.metrics.get(score),
                          "change": e.metrics.get(score, float("nan")) - b.metrics.get(score, float("nan"))}
                         for seed, b, e in pairs]).pipe(table)]
    notes = [note for _, b, e in pairs for note in (machine_note(b, e), quick_note(b, e)) if note]
    out += ["\n" + wrapped(note.lstrip("\n")) for note in dict.fromkeys(notes)]
    out += ["\n" + wrapped(note) for note in [gpu_note([r for _, b, e in pairs for r in (b, e)])] if note]

    folds = _long(pairs, "folds", ("rows",), "fold", score)
    if folds.empty:
        out.append(f"\nNo fold has a {name} in both runs of a seed (outputs of an older version?).")
    else:
        k = settings(pairs[0][1])["fold_count"]
        out += ["\nPer seed and fold (each change paired on the same rows):", table(folds),
                wrapped(f"  {len(pairs)} seeds x {len(folds) // len(pairs)} folds of {k} (corrected repeated k-fold "
                        "test): " + fold_verdict(folds["change"].to_numpy(), folds["rows"].to_numpy(dtype=float), k,
                                                 higher, "add seeds to both sides (the same on each) to decide"))]
    out += member_block([(b, e) for _, b, e in pairs])

    if comp.group_column and pairs[0][1].cv.get("groups"):
        noun = comp.group_noun
        groups = _long(pairs, "groups", ("rows",), noun, score)
        if len(groups):
            mean = groups.groupby(noun, sort=False).agg(rows=("rows", "first"), seeds=("seed", "size"),
                                                        baseline=("baseline", "mean"),
                                                        experiment=("experiment", "mean"),
                                                        change=("change", "mean")).reset_index()
            out += [f"\nPer {noun} ({comp.group_column}), mean over the seeds:", table(mean),
                    wrapped("  " + group_counts(mean["change"].to_numpy(), mean["rows"].to_numpy(dtype=float), noun))]
    return "\n".join(out)
