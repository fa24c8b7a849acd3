"""Benchmark (issue 18): every stage at the real competitions' row counts, end to end through `dvc repro`.

Archives with Kaggle's exact counts and layouts are built once and kept outside the repository (--cache-dir):
- State Farm: 22,424 train frames (26 drivers, 10 classes) + 79,726 test frames, photo-like 640x480 JPEGs
  (synthetic_statefarm.py: crops of real photographs shipped in packages, with jitter and sensor noise);
- Dogs vs Cats: 25,000 train + 12,500 test photo-like JPEGs of 500x375 to 300x400, in nested train.zip/test.zip;
- Digit Recognizer: 42,000 + 28,000 rows of 784 pixels (the demo's digit generator).
The labels carry no signal: time, memory and disk are measured, not scores.

Each is run as a user runs it: a git + DVC project like this repository, `dvc repro` from download to submission,
report and summary, with the shipped params except a tiny backbone (timm's `test_efficientnet`, random weights)
and a small cache (48x64 frames, 48x48 pets, digits as they are). Every stage's command runs under
stage_meter.py: wall time and the peak resident set of the stage's process and its children together. Disk is
the stage's outputs as dvc.lock records them. Then a no-op `dvc repro` and a `dvc status` (targets 5 s and 2 s).
The same runs at a quarter of the rows (the baseline, measured in the same run) give per stage the time ratio
(target: <= 5x for 4x the rows) and the memory ratio (<= 1.3x), and no stage may pass 4 GB at full size.

With --gpu it runs the real recipe instead (the shipped backbone, pretrained, at a competitor's image size, on
the GPU) at full size only, and judges the whole run against 10 minutes on one H200-class GPU and finetuning's
wait on the loader against 20% of its step time. On a CPU the same path runs at a tiny size (tests/test_full_size.py).

    python benchmarks/full_size.py [--comp statefarm] [--scales 0.25 1] [--cache-dir DIR] [--keep DIR]
    python benchmarks/full_size.py --gpu --comp statefarm      # the real recipe on a GPU (see --help)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from multiprocessing import Pool
from pathlib import Path

import pandas as pd
import yaml

from pipeline.core.config import with_changes
from memory_flat import make_dvc_project, run_cmd
from synthetic_statefarm import _ZIP_DATE, _frame_job, _photos, _update, write_statefarm_archive

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FULL = {"statefarm": (22_424, 79_726), "dogscats": (25_000, 12_500), "digits": (42_000, 28_000)}
SLUGS = {"statefarm": "state-farm-distracted-driver-detection", "dogscats": "dogs-vs-cats-redux-kernels-edition",
         "digits": "digit-recognizer"}
CACHE = {"statefarm": [48, 64], "dogscats": [48, 48], "digits": [28, 28]}
GPU_CACHE = {"statefarm": [240, 320], "dogscats": [224, 224], "digits": [28, 28]}
PET_SIZES = ((500, 375), (375, 500), (499, 333), (400, 300), (300, 400))
TARGET_MEMORY, TARGET_TIME, TARGET_PEAK_MB = 1.3, 5.0, 4096
GPU_TARGET_S, GPU_TARGET_WAIT = 600, 20  # the whole recipe on one H200-class GPU; finetuning's loader wait, %


def _deflated(zf: zipfile.ZipFile, name: str, data: bytes | None = None, path: Path | None = None) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    if path is not None:
        with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        zf.writestr(info, data)


def write_dogscats(path: Path, train: int, test: int) -> None:
    """Kaggle's layout: train.zip (train/cat.N.jpg, train/dog.N.jpg), test.zip (test/N.jpg), sample_submission.csv."""
    _photos()
    jobs = [((7, i), PET_SIZES[i % len(PET_SIZES)], 90) for i in range(train + test)]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, Pool(len(os.sched_getaffinity(0))) as pool:
        frames = pool.imap(_frame_job, jobs, chunksize=16)
        inner = {"train.zip": Path(tmp) / "train.zip", "test.zip": Path(tmp) / "test.zip"}
        with zipfile.ZipFile(inner["train.zip"], "w") as zf:
            for i in range(train):
                label, n = ("cat", "dog")[i % 2], i // 2
                _deflated(zf, f"train/{label}.{n}.jpg", next(frames))
        with zipfile.ZipFile(inner["test.zip"], "w") as zf:
            for i in range(1, test + 1):
                _deflated(zf, f"test/{i}.jpg", next(frames))
        with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
            sample = pd.DataFrame({"id": range(1, test + 1), "label": 0.5})
            _deflated(zf, "sample_submission.csv", sample.to_csv(index=False).encode())
            for name, file in inner.items():
                _deflated(zf, name, path=file)


def write_digits(path: Path, train: int, test: int) -> None:
    from pipeline.core.competitions import get_competition
    from pipeline.core.sections import DemoParams
    from pipeline.data.demo import write_demo_archive

    write_demo_archive(get_competition("digits"), DemoParams(train_per_class=train // 10, test=test), 0, path)


def archive(cache_dir: Path, comp: str, scale: float) -> Path:
    """The competition's archive at `scale` of the real row counts, built once into `cache_dir`."""
    train, test = (max(20, round(n * scale)) for n in FULL[comp])
    path = cache_dir / f"{comp}-{train}-{test}" / f"{SLUGS[comp]}.zip"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    start = time.perf_counter()
    if comp == "statefarm":
        write_statefarm_archive(part, train + test, test_share=test / (train + test), drivers=26)
    elif comp == "dogscats":
        write_dogscats(part, train, test)
    else:
        write_digits(part, train, test)
    part.rename(path)
    print(f"built {path} ({path.stat().st_size / 2**30:.2f} GB) in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def params(comp: str, source: Path, gpu: bool, image_size: list[int] | None = None) -> dict:
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    top = {key: value for key, value in shipped.items() if key not in shipped["competitions"]}
    if gpu:  # the real recipe: the shipped backbone, pretrained, at a competitor's image size
        changes = {"prepare": {"image_size": image_size or GPU_CACHE[comp]}}
        top["device"] = "auto"  # the GPU where there is one
    else:
        changes = {"prepare": {"image_size": CACHE[comp]},
                   "features": {"backbone": "test_efficientnet", "pretrained": False, "image_size": None}}
    section = _update(shipped[comp], {"data": {"source": str(source)}, "models": {"main": {}}, **changes})
    return {**top, "competitions": [comp], "models": ["main"], "launch": "python", comp: section}


def set_params(raw: dict, changes: list[str]) -> dict:
    """`raw` with each `dotted.key=yaml-value` of `changes` set, as `dvc exp run -S` would; a change to another
    competition's section than the one `raw` runs is left out."""
    others = set(FULL) - set(raw["competitions"])
    pairs = (change.partition("=") for change in changes)
    return with_changes(raw, {key: yaml.safe_load(value) for key, _, value in pairs if key.split(".")[0] not in others})


def metered_project(project: Path, raw_params: dict, log: Path) -> dict:
    env = make_dvc_project(project, raw_params)
    text = (project / "dvc.yaml").read_text()
    meter = f"cmd: python {HERE / 'stage_meter.py'} python -m"
    text = text.replace("cmd: python -m", meter).replace("cmd: ${launch} -m", meter)
    (project / "dvc.yaml").write_text(text)
    run_cmd(["git", "-c", "user.name=b", "-c", "user.email=b@example.com", "commit", "-qam", "metered"], project, env)
    return dict(env, STAGE_METER_LOG=str(log), TQDM_DISABLE="1")


def stage_rows(project: Path, log: Path) -> list[dict]:
    """One row per stage: the meter's figures joined with dvc.lock's output sizes, by command."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    by_cmd = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        by_cmd.setdefault(record["command"], record)  # the full repro's, not the no-op repro's (inputs runs again)
    rows = []
    for name, entry in lock.items():
        command = entry["cmd"].split("stage_meter.py ", 1)[-1]
        record = by_cmd.get(command)
        if record is None:
            continue
        disk = sum(out.get("size", 0) for out in entry.get("outs", []))
        rows.append({"stage": name, "kind": name.split("@")[0], **record, "disk_mb": round(disk / 2**20, 1)})
    return rows


def run_scale(comp: str, scale: float, cache_dir: Path, work: Path, gpu: bool,
              image_size: list[int] | None = None, changes: tuple[str, ...] = ()) -> dict:
    source = archive(cache_dir, comp, scale)
    project, log = work / f"{comp}-{scale:g}", work / f"{comp}-{scale:g}.jsonl"
    env = metered_project(project, set_params(params(comp, source, gpu, image_size), list(changes)), log)
    dvc = [sys.executable, "-m", "dvc"]
    full_s, _ = run_cmd(dvc + ["repro"], project, env)
    noop_s, _ = run_cmd(dvc + ["repro"], project, env)
    run_cmd(dvc + ["status"], project, env)
    status_s, _ = run_cmd(dvc + ["status"], project, env)
    du = subprocess.run(["du", "-sm", str(project)], capture_output=True, text=True).stdout.split()[0]
    train, test = (max(20, round(n * scale)) for n in FULL[comp])
    return {"comp": comp, "scale": scale, "gpu": gpu, "train": train, "test": test, "repro_s": round(full_s, 1),
            "noop_repro_s": round(noop_s, 1), "status_s": round(status_s, 1), "project_mb": int(du),
            "archive_mb": round(source.stat().st_size / 2**20, 1), "stages": stage_rows(project, log)}


def by_kind(run: dict) -> dict[str, dict]:
    """Per kind of stage (all folds of finetune together): total seconds, the largest peak, total disk."""
    out: dict[str, dict] = {}
    for row in run["stages"]:
        k = out.setdefault(row["kind"], {"seconds": 0.0, "peak_tree_mb": 0.0, "disk_mb": 0.0, "n": 0, "waits": []})
        if row.get("input_wait") is not None:
            k["waits"].append(row["input_wait"])
        k["seconds"] += row["seconds"]
        k["peak_tree_mb"] = max(k["peak_tree_mb"], row["peak_tree_mb"])
        k["disk_mb"] += row["disk_mb"]
        k["n"] += 1
    return out


def _verdict(kind: str, f: dict, t_ratio: float, m_ratio: float, rows_ratio: float, gpu: bool) -> str:
    checks = [("time", t_ratio > TARGET_TIME * rows_ratio / 4), ("memory", m_ratio > TARGET_MEMORY),
              ("over 4 GB", f["peak_tree_mb"] > TARGET_PEAK_MB)]
    if gpu:  # on a GPU what matters is the clock, and whether finetuning is fed fast enough
        checks = [("input-bound", kind == "finetune" and any(w > GPU_TARGET_WAIT for w in f["waits"]))]
    misses = [what for what, bad in checks if bad]
    return "MISSED " + ", ".join(misses) if misses else "ok"


def table(small: dict | None, big: dict) -> str:
    """Per kind of stage; with a baseline run (`small`) also full against baseline."""
    a, b = (by_kind(small) if small else {}), by_kind(big)
    rows = big["train"] + big["test"]
    rows_ratio = rows / (small["train"] + small["test"]) if small else float("nan")
    against = f" against {small['train']} + {small['test']}" if small else ""
    lines = [f"## {big['comp']}{' (--gpu)' if big.get('gpu') else ''}: {big['train']} + {big['test']} rows{against}",
             "| stage | stages | seconds | rows/s | peak RSS MB | disk MB | waiting on input | time ratio | memory ratio "
             "| verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, f in b.items():
        s = a.get(kind)
        t_ratio = f["seconds"] / s["seconds"] if s and s["seconds"] else float("nan")
        m_ratio = f["peak_tree_mb"] / s["peak_tree_mb"] if s and s["peak_tree_mb"] else float("nan")
        wait = f"{sum(f['waits']) / len(f['waits']):.0f}%" if f["waits"] else "-"
        ratios = " | ".join("-" if r != r else f"{r:.2f}" for r in (t_ratio, m_ratio))  # nan: no baseline
        lines.append(f"| {kind} | {f['n']} | {f['seconds']:.1f} | {rows / max(f['seconds'], 1e-9):.0f} | "
                     f"{f['peak_tree_mb']:.0f} | {f['disk_mb']:.0f} | {wait} | {ratios} | "
                     f"{_verdict(kind, f, t_ratio, m_ratio, rows_ratio, bool(big.get('gpu')))} |")
    data_mb = sum(b.get(k, {"disk_mb": 0})["disk_mb"] for k in ("prepare", "features")) + big["archive_mb"]
    whole = f"dvc repro {big['repro_s']:.0f} s" + (f" (quarter {small['repro_s']:.0f} s)" if small else "")
    if big.get("gpu"):
        whole += f" (target on one H200-class GPU: {GPU_TARGET_S} s: {'ok' if big['repro_s'] <= GPU_TARGET_S else 'MISSED'})"
    lines += [f"{whole}; no-op repro {big['noop_repro_s']:.1f} s (target 5), dvc status {big['status_s']:.1f} s "
              f"(target 2); project on disk {big['project_mb']} MB against archive + cache + features {data_mb:.0f} MB."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comp", choices=sorted(FULL), action="append", help="default: all three")
    parser.add_argument("--scales", type=float, nargs="+", metavar="SCALE",
                        help="share of the real row counts: BASELINE SIZE (default 0.25 1), or one SIZE for no "
                        "baseline (default with --gpu: 1)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pipeline-full-size")
    parser.add_argument("--keep", type=Path, help="keep the DVC projects here (default: a temporary folder)")
    parser.add_argument("--gpu", action="store_true", help="the shipped backbone, pretrained, at 240x320 (State "
                        "Farm) / 224x224 (Dogs vs Cats), on the GPU where there is one (the CPU otherwise: slow)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="with --gpu: another cache size (e.g. a tiny one, to try the path on a CPU)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml change on top, as dvc exp run -S (e.g. statefarm.finetune.min_steps=2)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    scales = args.scales or ([1.0] if args.gpu else [0.25, 1.0])
    if len(scales) > 2 or (args.image_size and not args.gpu):
        parser.error("--scales takes one or two values; --image-size goes with --gpu")
    work = args.keep or Path(tempfile.mkdtemp(prefix="full-size-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for comp in args.comp or sorted(FULL):
        runs = [run_scale(comp, scale, args.cache_dir, work, args.gpu, args.image_size, args.set)
                for scale in scales]
        small, big = (None, *runs) if len(runs) == 1 else runs
        results.append({"small": small, "big": big})
        print(table(small, big), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
