"""Benchmark P5: memory that stays flat as the archive grows, and a no-op `dvc status` that stays fast.

Targets:
- the peak resident memory of `prepare` and of `features` on 20k images <= 1.3x their peak on 2k images (the
  baseline, measured in the same run), for the stage's main process and for its largest child process (prepare's
  decoding processes, features' DataLoader workers);
- a no-op `dvc status` on a DVC project holding the 20k-image cache <= 2 s.

Small frames keep it fast: synthetic State Farm archives (Kaggle's exact layout, photo-like 128x96 JPEG frames,
see synthetic_statefarm.py) cached at 48x64, and a tiny timm backbone for features (`test_efficientnet`, random
weights); every other setting is params.yaml's (speed.prepare_workers 0, speed.features_workers -1, aug_copies 1).
The memory-mapped cache's pages that a process touches count in its resident set, so a small cache understates
their share: `--size 120 160` (the shipped cache size, 1.1 GB at 20k images) shows it at a realistic scale.

Memory: each stage's `run()` runs in a fresh interpreter (`python -c`), after `download.run` made the raw index
(not measured). Printed per run: the kernel's peak resident set of the main process (VmHWM, which counts the
pages of memory-mapped files the process touched as well as its own memory), the peaks of its anonymous and
file-backed parts (sampled every 10 ms from /proc/self/status), the largest child's peak (RUSAGE_CHILDREN), and
the largest anonymous and file-backed parts seen in any child (sampled likewise). A fresh interpreter that only
imports the stage's module is printed as the floor.

dvc status: a git + DVC project like this repository (its dvc.yaml, .dvcignore, .gitignore and pipeline/, a
params.yaml for State Farm alone with `data.source` at the synthetic archive) runs `dvc repro` up to
`features@statefarm-main` (inputs, download, prepare, features: the 20k raw folder and cache are outputs with
`cache: false`), then `dvc status` runs three times: the second (warm) run is timed and judged, the third shows
how much the timing wobbles; for the pipeline's stages up to features (`--with-deps`: nothing but the always-run
`inputs` check should be reported) and for the whole dvc.yaml (which lists the stages that never ran). The same project at 2k images and `dvc --version` (the
start-up every dvc command pays) are the baselines.

    python benchmarks/memory_flat.py [--images 20000] [--baseline-images 2000] [--size 48 64] [--no-dvc] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_statefarm import work_dir, statefarm_params, write_statefarm_archive  # noqa: E402

from pipeline.stages import download  # noqa: E402
from pipeline.core.config import parse_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAME = (128, 96)  # (width, height) of the archive's JPEGs by default: 640x480 scaled down 5x, like the demo's

# Runs in a fresh interpreter: argv = stage ("prepare", "features", "imports-prepare", "imports-features"), the
# project root, the params file (JSON). Prints one line "RESULT {json}" with the peaks in kB.
PROBE = r"""
import json, resource, sys, threading, time
from pathlib import Path
import psutil

KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")
peaks, child_peaks = {}, {}

def status(pid="self"):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in KEYS:
                out[key] = int(value.split()[0])
    return out

stop = threading.Event()

def sample():
    me = psutil.Process()
    while True:
        for key, value in status().items():
            peaks[key] = max(peaks.get(key, 0), value)
        for child in me.children(recursive=True):
            try:
                for key, value in status(child.pid).items():
                    child_peaks[key] = max(child_peaks.get(key, 0), value)
            except (OSError, ValueError):  # gone meanwhile
                pass
        if stop.wait(0.01):
            return

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
stage, root, params_file = sys.argv[1:4]
from pipeline.core.config import parse_params
params = parse_params(json.loads(Path(params_file).read_text()), params_file)
start = time.perf_counter()
if stage == "prepare":
    from pipeline.stages import prepare
    prepare.run(params, "statefarm", Path(root))
    # its decoding processes are the forkserver's children: stopping it reaps them into RUSAGE_CHILDREN
    from multiprocessing import forkserver
    forkserver._forkserver._stop()
elif stage == "features":
    from pipeline.stages import features
    features.run(params, "statefarm", "main", Path(root))
elif stage == "imports-prepare":
    import pipeline.stages.prepare
elif stage == "imports-features":
    import pipeline.stages.features, timm
else:
    sys.exit(f"unknown stage {stage}")
seconds = time.perf_counter() - start
stop.set()
sampler.join()
final = status()
result = {"seconds": seconds, "hwm_kb": final["VmHWM"],
          "anon_kb": peaks.get("RssAnon", 0), "file_kb": peaks.get("RssFile", 0), "shmem_kb": peaks.get("RssShmem", 0),
          "child_anon_kb": child_peaks.get("RssAnon", 0), "child_file_kb": child_peaks.get("RssFile", 0),
          "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
          "child_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
print("RESULT " + json.dumps(result))
"""


def probe(stage: str, root: Path, params_file: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, stage, str(root), str(params_file)],
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        sys.exit(f"{stage} in {root} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def stage_changes(size: tuple[int, int], backbone: str) -> dict:
    return {"prepare": {"image_size": list(size)},
            "features": {"backbone": backbone, "pretrained": False, "image_size": None, "cut": -1}}


def run_cmd(args, cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(map(str, args))} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def make_dvc_project(project: Path, raw_params: dict) -> dict:
    """A git + DVC project like this repository's: its dvc.yaml, ignore files and pipeline/ copied, `raw_params`
    as params.yaml; returns the environment its commands need (this interpreter's bin first on PATH)."""
    project.mkdir(parents=True)
    shutil.copytree(REPO / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, project / name)
    (project / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=str(project), DVC_NO_ANALYTICS="1")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    run_cmd(git + ["init", "-q"], project, env)
    run_cmd([sys.executable, "-m", "dvc", "init", "-q"], project, env)
    run_cmd(git + ["add", "-A"], project, env)
    run_cmd(git + ["commit", "-qm", "benchmark project"], project, env)
    return env


def dvc_status_times(project: Path, env: dict, target: str) -> dict:
    dvc = [sys.executable, "-m", "dvc"]
    repro_s, _ = run_cmd(dvc + ["repro", target], project, env)
    out = {"repro": repro_s}
    for name, args in (("targeted", ["status", target, "--with-deps"]), ("all", ["status"])):
        run_cmd(dvc + args, project, env)  # the first run may fill DVC's state database
        out[name], out[name + "_text"] = run_cmd(dvc + args, project, env)  # the second, warm: what is judged
        out[name + "_third"], _ = run_cmd(dvc + args, project, env)  # how much the timing wobbles
    out["version"], _ = run_cmd(dvc + ["--version"], project, env)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="train + test frames of the large archive")
    parser.add_argument("--baseline-images", type=int, default=2000, help="... of the baseline archive")
    parser.add_argument("--size", type=int, nargs=2, default=(48, 64), metavar=("HEIGHT", "WIDTH"),
                        help="prepare.image_size")
    parser.add_argument("--frame", type=int, nargs=2, default=None, metavar=("WIDTH", "HEIGHT"),
                        help="size of the archive's JPEG frames (default: 128x96, or the cache's size if larger)")
    parser.add_argument("--backbone", default="test_efficientnet", help="features.backbone (random weights)")
    parser.add_argument("--no-dvc", action="store_true", help="skip the dvc status part")
    parser.add_argument("--dvc-target", default="features@statefarm-main",
                        help="what `dvc repro` makes before `dvc status` (e.g. prepare@statefarm: faster)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    size = tuple(args.size)
    frame = tuple(args.frame or (max(FRAME[0], size[1]), max(FRAME[1], size[0])))
    sizes = {"baseline": args.baseline_images, "large": args.images}
    with work_dir(args.keep, "memory-flat-") as work:
        archives, results = {}, {}
        for name, n in sizes.items():
            t = time.perf_counter()
            archives[name] = work / f"statefarm-{n}.zip"
            made = write_statefarm_archive(archives[name], n, size=frame)
            raw = statefarm_params(archives[name], stage_changes(size, args.backbone))
            params_file = work / f"params-{n}.json"
            params_file.write_text(json.dumps(raw))
            root = work / f"project-{n}"
            download.run(parse_params(raw, str(params_file)), "statefarm", root)
            print(f"{name}: {made['train']} train + {made['test']} test frames of {frame[0]}x{frame[1]}, zip "
                  f"{made['zip_bytes'] / 1e6:.0f} MB, made and indexed in {time.perf_counter() - t:.0f} s")
            for stage in ("prepare", "features"):
                results[name, stage] = probe(stage, root, params_file)
        for stage in ("prepare", "features"):
            results["floor", stage] = probe(f"imports-{stage}", work / "project-none", params_file)

        fp = parse_params(raw, "params").model("statefarm", "main").features
        speed = parse_params(raw, "params").comp("statefarm").speed
        print(f"\nPeak memory (MB), cache {size[0]}x{size[1]}, features {fp.backbone}, batch "
              f"{speed.features_batch_size}, aug_copies {fp.aug_copies}, speed.features_workers "
              f"{speed.features_workers}, speed.prepare_workers {speed.prepare_workers}:")
        print(f"  {'stage':9s} {'images':>7s} {'main VmHWM':>10s} {'anon':>6s} {'file':>6s} {'shmem':>6s} "
              f"{'largest child':>13s} {'anon':>6s} {'file':>6s} {'seconds':>8s}")
        for stage in ("prepare", "features"):
            floor = results["floor", stage]
            print(f"  {stage:9s} {'imports':>7s} {mb(floor['hwm_kb']):>10s} {mb(floor['anon_kb']):>6s} "
                  f"{mb(floor['file_kb']):>6s} {mb(floor['shmem_kb']):>6s} {'-':>13s} {'-':>6s} {'-':>6s} {'-':>8s}")
            for name, n in sizes.items():
                r = results[name, stage]
                print(f"  {stage:9s} {n:7d} {mb(r['hwm_kb']):>10s} {mb(r['anon_kb']):>6s} {mb(r['file_kb']):>6s} "
                      f"{mb(r['shmem_kb']):>6s} {mb(r['child_maxrss_kb']):>13s} {mb(r['child_anon_kb']):>6s} "
                      f"{mb(r['child_file_kb']):>6s} {r['seconds']:8.1f}")
        cache_mb = args.images * size[0] * size[1] * 3 / 2**20
        print(f"  (anon: the process's own memory; file: pages of mapped files it touched, the memory-mapped cache "
              f"and features among them; the {args.images}-image cache is {cache_mb:.0f} MB)")
        times = args.images / args.baseline_images
        for stage in ("prepare", "features"):
            small, large, floor = results["baseline", stage], results["large", stage], results["floor", stage]
            for who, key in (("main process", "hwm_kb"), ("largest child", "child_maxrss_kb")):
                if not small[key]:
                    print(f"  {stage} {who}: none")
                    continue
                ratio = large[key] / small[key]
                extra = ""
                if who == "main process":
                    extra = (f" (+{mb(small[key] - floor['hwm_kb'])} and +{mb(large[key] - floor['hwm_kb'])} MB over "
                             f"the imports)")
                print(f"  {stage} {who}: {mb(small[key])} -> {mb(large[key])} MB, {ratio:.2f}x at {times:.0f}x the "
                      f"images{extra}; target <= 1.3x: {'ok' if ratio <= 1.3 else 'MISSED'}")

        if args.no_dvc:
            return
        print(f"\ndvc status (second, warm run), `dvc repro {args.dvc_target}` done first:")
        status = {}
        for name, n in sizes.items():
            raw = statefarm_params(archives[name], stage_changes(size, args.backbone))
            project = work / f"dvc-{n}"
            env = make_dvc_project(project, raw)
            status[name] = dvc_status_times(project, env, args.dvc_target)
        print(f"  {'what':62s} {'seconds':>8s} {'third run':>9s}")
        print(f"  {'dvc --version (start-up, baseline)':62s} {status['large']['version']:8.2f}")
        for name, n in sizes.items():
            s = status[name]
            print(f"  {f'dvc repro {args.dvc_target}, {n} images':62s} {s['repro']:8.1f}")
            print(f"  {f'dvc status {args.dvc_target} --with-deps, {n} images':62s} {s['targeted']:8.2f} "
                  f"{s['targeted_third']:9.2f}")
            print(f"  {f'dvc status (all of dvc.yaml), {n} images':62s} {s['all']:8.2f} {s['all_third']:9.2f}")
        large = status["large"]
        reported = [line for line in large["targeted_text"].splitlines() if line and not line[0].isspace()]
        print(f"  `dvc status {args.dvc_target} --with-deps` on {args.images} images reported: "
              + (" ".join(large["targeted_text"].split())[:300] or "nothing"))
        noop = all(line.startswith("inputs") for line in reported)
        base = status["baseline"]
        print(f"  {args.images}/{args.baseline_images} images: targeted {large['targeted'] / base['targeted']:.2f}x, "
              f"all {large['all'] / base['all']:.2f}x")
        print(f"  no-op dvc status on {args.images} images: {large['targeted']:.2f} s; target <= 2 s: "
              f"{'ok' if large['targeted'] <= 2 and noop else 'MISSED'}"
              + ("" if noop else " (more than the always-run inputs check was reported)"))
        print(f"  dvc status of all of dvc.yaml on {args.images} images: {large['all']:.2f} s (<= 2 s: "
              f"{'ok' if large['all'] <= 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
