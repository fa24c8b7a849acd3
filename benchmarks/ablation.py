"""Ablation: each of the lesson's techniques switched against the shipped params, measured fold by fold.

For each competition the shipped params run once in-process (the baseline: download -> folds -> prepare ->
features -> head and finetune per fold -> ensemble); then each variant re-runs, on the same folds, from the first
stage that reads a section it changes (as `dvc repro` would) through the member it is scored on: head techniques
on the head's out-of-fold log loss, finetune and augmentation techniques on finetuning's, ensemble techniques on
the ensemble's cross-fitted score. Stages after the scored one are not re-run. The change per fold is paired;
its row-weighted mean, spread and corrected standard error use `pipeline compare`'s test. Writes
`reports/ablation.md` (and prints it).

    TQDM_DISABLE=1 OMP_NUM_THREADS=2 python benchmarks/ablation.py                 # demo, both competitions
    python benchmarks/ablation.py --comps statefarm --photos                        # State Farm on real photos
    python benchmarks/ablation.py --only head_dropout_rising,ensemble_neighbours_5  # a few variants
    python benchmarks/ablation.py --seeds 42,1,2 --only head_dropout_0               # over three seeds' folds
    python benchmarks/ablation.py --comps dogscats --set ema:finetune.ema_decay=0.998 --set ema:finetune.epochs=6
                                  # a variant from the command line: NAME[@MEMBER]:KEY=VALUE, repeated per key

State Farm also shows driver-grouped CV against a random split of the same rows (the baseline head refitted on
random folds): how much a random split flatters.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.stages import download, ensemble, features, finetune, folds, head, prepare
from pipeline.commands.compare import fold_verdict
from pipeline.core.competitions import get_competition
from pipeline.core.config import parse_params, with_changes
from pipeline.scoring.metrics import scores
from pipeline.data.outputs import load_oof, train_rows
from pipeline.core.io import read_json, write_csv, write_text
from pipeline.core.paths import Paths

REPO = Path(__file__).resolve().parents[1]

# name -> (changes under the competition's section, the member that is scored). Each variant re-runs from the first
# stage whose dvc.yaml params list a changed section (as `dvc repro` would) through the scored member.
VARIANTS = {
    "head_dropout_0.25": ({"head.dropout": 0.25}, "head"),
    "head_dropout_0": ({"head.dropout": 0.0}, "head"),
    "head_input_dropout_0": ({"head.input_dropout": 0.0}, "head"),
    "head_dropout_rising": ({"head.dropout_schedule": "rising"}, "head"),
    "head_pseudo_label_0.9": ({"head.pseudo_label": 0.9}, "head"),
    "features_aug_copies_0": ({"features.aug_copies": 0}, "head"),
    "features_aug_copies_3": ({"features.aug_copies": 3}, "head"),
    "finetune_from_random_head": ({"finetune.init": "random"}, "finetune"),
    "finetune_layer_decay_0.5": ({"finetune.layer_decay": 0.5}, "finetune"),
    "finetune_unfreeze_2": ({"finetune.unfreeze": 2}, "finetune"),
    "augment_rgb_shift_0.1": ({"finetune.augment.rgb_shift": 0.1}, "finetune"),
    "augment_none": ({"finetune.augment.shift": 0.0, "finetune.augment.scale": 0.0, "finetune.augment.rotate": 0.0,
                      "finetune.augment.brightness_contrast": 0.0, "finetune.augment.hflip": 0.0}, "finetune"),
    "ensemble_neighbours_5": ({"ensemble.neighbours": 5}, "ensemble"),
    "features_cut_4_head": ({"features.cut": 4}, "head"),
    "features_cut_3_head": ({"features.cut": 3}, "head"),
    "features_cut_3_finetuned": ({"features.cut": 3}, "finetune"),
    "ensemble_weighted": ({"ensemble.members": "weighted"}, "ensemble"),
    # issue 30's modern recipe, each against everything off; smoothing and mixup also through the ensemble (does
    # its calibration win back what they cost?); "..." in a list: the shipped list's items
    "finetune_ema_0.998": ({"finetune.ema_decay": 0.998}, "finetune"),
    "finetune_mixup_0.2": ({"finetune.mixup": 0.2}, "finetune"),
    "finetune_mixup_0.2_ensemble": ({"finetune.mixup": 0.2}, "ensemble"),
    "finetune_cutmix_1": ({"finetune.cutmix": 1.0}, "finetune"),
    "finetune_label_smoothing_0.1": ({"finetune.label_smoothing": 0.1}, "finetune"),
    "finetune_label_smoothing_0.1_ensemble": ({"finetune.label_smoothing": 0.1}, "ensemble"),
    "augment_trivial": ({"finetune.augment.policy": "trivial"}, "finetune"),
    "tta_plus_zoom": ({"finetune.tta": ["...", "zoom"]}, "finetune"),
    "tta_plus_zoom_out": ({"finetune.tta": ["...", "zoom_out"]}, "finetune"),
    # a second model beside the baseline's: another seed, or the backbone cut at level 3 (its stages only re-run)
    "ensemble_plus_seed_model": ({"models": ["main", "seed2"], "models.seed2": {"seed": 7}}, "ensemble"),
    "ensemble_plus_cut_model": ({"models": ["main", "cut3"], "models.cut3": {"features": {"cut": 3}}}, "ensemble"),
}
ORDER = ["features", "head", "finetune", "ensemble"]


def first_stage(changes: dict) -> str:
    """The earliest stage whose params in dvc.yaml list a section the variant changes (a new model: features)."""
    if "models" in changes:
        return "features"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    sections = {f"${{item.comp}}.{dotted.split('.')[0]}" for dotted in changes}
    return next(stage for stage in ORDER if sections & set(stages[stage].get("params", [])))


def params_for(comp: str, changes: dict, source: str | None, seed: int | None = None):
    """The shipped params for `comp` alone, with `changes` (dotted keys under the competition's section; `models`
    is the top-level list) and the top-level `seed`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["competitions"] = [comp]
    for other in list(raw):
        if other not in (comp, "competitions", "folds", "seed", "device", "models"):
            raw.pop(other)
    if source:
        raw[comp]["data"]["source"] = source
        demo_size = raw[comp]["data"]["demo"]["image_size"]  # RESULTS' rows were measured at the demo's size
        raw[comp]["prepare"]["image_size"] = demo_size or raw[comp]["prepare"]["image_size"]
    if seed is not None:
        raw["seed"] = seed
    changes = {dotted if dotted == "models" else f"{comp}.{dotted}": value for dotted, value in changes.items()}
    for dotted, value in changes.items():
        if isinstance(value, list) and value[:1] == ["..."]:  # the shipped list, extended
            node = raw
            for key in dotted.split("."):
                node = node[key]
            changes[dotted] = list(dict.fromkeys([*node, *value[1:]]))
    with_changes(raw, changes)
    return parse_params(raw, "ablation params")


def parse_sets(sets: list[str]) -> dict:
    """`--set NAME[@MEMBER]:KEY=VALUE` options as variants: keys under the competition's section, values as YAML,
    one key per option (repeat NAME for more); the member scored defaults to the first key's stage (features ->
    head)."""
    variants = {}
    for option in sets:
        name, sep, change = option.partition(":")
        key, eq, value = change.partition("=")
        if not (sep and eq and key):
            raise SystemExit(f"--set {option!r}: expected NAME[@MEMBER]:KEY=VALUE, e.g. ema:finetune.ema_decay=0.998")
        name, _, member = name.partition("@")
        section = key.split(".")[0]
        member = member or {"features": "head", "models": "ensemble"}.get(section, section)
        if member not in ("head", "finetune", "ensemble"):
            raise SystemExit(f"--set {option!r}: the member scored must be head, finetune or ensemble; got {member!r}")
        changes, _ = variants.setdefault(name, ({}, member))
        changes[key] = yaml.safe_load(value)
    return variants


def run_from(params, comp: str, root: Path, first: str, last: str = "ensemble", skip_models=()) -> None:
    """Run the stages from `first` to `last` (those before `first` already ran in `root`), for every model but
    `skip_models` (already run)."""
    models = [m for m in params.models if m not in skip_models]
    for stage in ORDER[ORDER.index(first): ORDER.index(last) + 1]:
        if stage == "ensemble":
            ensemble.run(params, comp, root)
        for model in models:
            if stage == "features":
                features.run(params, comp, model, root)
            elif stage in ("head", "finetune"):
                for k in params.folds:
                    {"head": head, "finetune": finetune}[stage].run(params, comp, model, k, root)


def fold_scores(root: Path, comp: str, member: str, folds) -> tuple[np.ndarray, np.ndarray]:
    """Log loss and rows of each fold, for the member scored (of the first model, `main`)."""
    paths = Paths(comp, root)
    if member == "ensemble":
        cv = read_json(paths.cv)["folds"]
        return np.array([cv[str(k)]["logloss"] for k in folds]), np.array([cv[str(k)]["rows"] for k in folds])
    m = [read_json(paths.fold_metrics(member, k)) for k in folds]
    return np.array([x["logloss"] for x in m]), np.array([x["val_rows"] for x in m], dtype=float)


def copy_run(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("dvclive"))


def random_split_head(params, comp: str, root: Path) -> tuple[float, float]:
    """Grouped CV against a random split of the same rows: the baseline heads refitted on StratifiedKFold folds."""
    paths = Paths(comp, root)
    def head_oof() -> float:
        for k in params.folds:
            head.run(params, comp, "main", k, root)
        ids, labels, _ = train_rows(paths, get_competition(comp))
        oof = load_oof(get_competition(comp), [paths.fold_model("head", k) for k in params.folds], ids)
        return scores(oof, labels)["logloss"]

    grouped = head_oof()
    table = pd.read_csv(paths.folds, dtype={"id": str, "group": str})
    table["fold"] = folds.assign_folds(table, params.fold_count, params.seed, grouped=False)
    write_csv(paths.folds, table)
    return grouped, head_oof()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comps", default="statefarm,dogscats")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--photos", action="store_true", help="State Farm on photos' real photos")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "ablation.md")
    parser.add_argument("--seeds", default="", help="comma-separated top-level seeds (other folds, other inits) to "
                        "repeat each comparison with (default: the shipped seed)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME[@MEMBER]:KEY=VALUE",
                        help="a variant from the command line (repeat for more keys or variants); with --set, only "
                        "these run")
    parser.add_argument("--baseline", type=Path, help="reuse this finished baseline folder (one competition, one "
                        "seed, the same params) instead of computing it")
    args = parser.parse_args()
    variants = {n: v for n, v in VARIANTS.items() if n in args.only.split(",") or not (args.only or args.set)}
    variants.update(parse_sets(args.set))
    work = Path(tempfile.mkdtemp(prefix="ablation-"))
    cwd = os.getcwd()
    lines = [f"# Ablation ({time.strftime('%Y-%m-%d')}, `benchmarks/ablation.py`{' --photos' if args.photos else ''})",
             "", "Change of out-of-fold log loss against the shipped params (negative: better), per fold, paired on "
             "the same folds. Verdict: `pipeline compare`'s corrected resampled t-test (Nadeau & Bengio) at 95%.", ""]
    for comp in args.comps.split(","):
        source = None
        if args.photos and comp == "statefarm":
            from photos import write_photo_archive

            source = str(write_photo_archive(work / "photos.zip", work / "answers.csv", seed=1))
        seeds = [int(x) for x in args.seeds.split(",") if x] or [None]
        results = {name: [] for name in variants}  # per seed: (baseline fold scores, variant's, rows)
        deepest = max(ORDER.index(member) for _, member in variants.values())
        for seed in seeds:
            base_params = params_for(comp, {}, source, seed)
            base = work / comp / f"seed{base_params.seed}" / "baseline"
            started = time.perf_counter()
            if args.baseline:  # another ablation's finished baseline: split the variants over processes
                copy_run(args.baseline, base)
                os.chdir(base)
            else:
                base.mkdir(parents=True)
                os.chdir(base)  # dvclive looks for a repository in the working directory
                with contextlib.redirect_stdout(io.StringIO()):
                    for stage in (download, folds, prepare):
                        stage.run(base_params, comp, base)
                    run_from(base_params, comp, base, "features", ORDER[max(deepest, ORDER.index("head"))])
            baseline_seconds = time.perf_counter() - started
            if seed == seeds[0]:
                lines += [f"## {comp}{' (real photos)' if source else ' (demo)'}", ""]
                if len(seeds) > 1:
                    lines.append(f"Repeated with seeds {', '.join(str(x) for x in seeds)} (each its own folds): "
                                 "per fold, the seeds' changes are separated by ' / '; the verdict is the corrected "
                                 "repeated k-fold t-test over all of them.")
            if Paths(comp, base).metrics.is_file():
                top, choice = read_json(Paths(comp, base).metrics), read_json(Paths(comp, base).cv)["choice"]
                lines.append(f"Baseline (seed {base_params.seed}): CV log loss {top['logloss']:.4f}, accuracy "
                             f"{top['accuracy']:.4f} ({choice['kind']}+{choice['method']}); "
                             + (f"reused from {args.baseline}." if args.baseline else f"run {baseline_seconds:.0f} s."))
            for name, (changes, member) in variants.items():
                first = first_stage(changes)
                if not base_params.comp(comp).finetune.augment.hflip:  # State Farm: never flipped anyway
                    changes = {k: v for k, v in changes.items() if k != "finetune.augment.hflip"}
                params = params_for(comp, changes, source, seed)
                root = base.parent / name
                copy_run(base, root)
                os.chdir(root)
                started = time.perf_counter()
                skip = base_params.models if "models" in changes else ()
                with contextlib.redirect_stdout(io.StringIO()):
                    run_from(params, comp, root, first, member, skip_models=skip)
                seconds = time.perf_counter() - started
                b, rows = fold_scores(base, comp, member, params.folds)
                v, _ = fold_scores(root, comp, member, params.folds)
                results[name].append((b, v, rows))
                print(f"{comp} seed {base_params.seed} {name}: {np.average(v - b, weights=rows):+.4f} "
                      f"({seconds:.0f} s)", flush=True)
                shutil.rmtree(root, ignore_errors=True)
        lines += ["",
                  "| variant | re-run..scored | baseline | variant | change | per fold | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for name, (changes, member) in variants.items():
            b, v, rows = (np.concatenate([r[i] for r in results[name]]) for i in range(3))
            diffs = v - b
            verdict = fold_verdict(diffs, rows, repeats=len(seeds)).split("-> ")[-1].split(";")[0]
            per_fold = " / ".join(" ".join(f"{d:+.3f}" for d in r[1] - r[0]) for r in results[name])
            lines.append(f"| {name} | {first_stage(changes)}..{member} | {np.average(b, weights=rows):.4f} | "
                         f"{np.average(v, weights=rows):.4f} | {np.average(diffs, weights=rows):+.4f} | {per_fold} "
                         f"| {verdict} |")
        if get_competition(comp).group_column:
            root = base.parent / "random_split"
            copy_run(base, root)
            os.chdir(root)
            with contextlib.redirect_stdout(io.StringIO()):
                grouped, random = random_split_head(base_params, comp, root)
            lines += ["", f"Driver-grouped CV of the head {grouped:.4f} against a random split of the same rows "
                          f"{random:.4f}: a random split puts a driver's near-duplicate frames on both sides and "
                          f"flatters by {grouped - random:+.4f}."]
        lines.append("")
        os.chdir(cwd)
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)
    print(f"written to {args.out}; work folder {work} (delete when done)")


if __name__ == "__main__":
    main()
