"""Benchmark P1: the prepare stage's decode speed against the practical limit of reduced-size JPEG decoding.

A synthetic archive in Kaggle's exact State Farm layout, of 640x480 photo-like JPEG frames (real photographs
from scikit-image, scikit-learn and matplotlib, cropped, mirrored, colour-jittered, quality 90: see
synthetic_statefarm.py), is decoded to the 240x320 cache three ways, in one run:

- prepare: `pipeline.stages.prepare.run` end to end (`speed.prepare_workers: 0`, one process per core, each reading its
  zip members itself and decoding with OpenCV's scaled JPEG decoding into the .npy), after
  `pipeline.stages.download.run` has indexed the archive (not timed), the previous run's cache deleted first;
- limit: the faster of two bare loops, one process per core (`multiprocessing.Pool`), each opening the zip
  itself and doing only read + reduced-size decode + resize to 240x320, nothing kept or written, over the same
  members: PIL (`draft('RGB', (320, 240))`, convert, BILINEAR resize) and OpenCV (as prepare decodes);
- naive: one process decoding every frame at full size (no reduced decoding), then the same resize.

Target: prepare >= 0.8x the limit's images/s. The naive loop is the baseline before the stage was parallel and
drafted. Timings are the best of --repeats; nothing is asserted. Beside each rate: the CPU time per image of all
its processes (user and system) in that run, which says where a difference goes (the limit writes nothing, so
the cost of the cache's pages shows as system time) and moves less than wall time on a shared machine.

    python benchmarks/prepare_speed.py [--images 2000] [--size 240 320] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import time
import zipfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_statefarm import work_dir, statefarm_params, write_statefarm_archive  # noqa: E402

from pipeline.stages import download, prepare  # noqa: E402
from pipeline.core.config import parse_params  # noqa: E402

_ZIPS: dict[str, zipfile.ZipFile] = {}


def _bare_decode(job) -> int:
    """The limit's work on one chunk: read each member from this process's own handle on its zip, decode it at
    reduced size (PIL's draft, or OpenCV's scaled decoding as prepare does) and resize it; the pixels are
    dropped."""
    raw, members, (height, width), how = job
    if how == "opencv":
        import cv2
        cv2.setNumThreads(1)
    for container, member in members:
        key = os.path.join(raw, container)
        if key not in _ZIPS:
            _ZIPS[key] = zipfile.ZipFile(key)
        data = _ZIPS[key].read(member)
        if how == "opencv":
            with Image.open(io.BytesIO(data)) as img:  # as prepare: the header, to choose the scale
                full_w, full_h = img.size
            scale = max((f for f in (8, 4, 2) if full_w // f >= width and full_h // f >= height), default=1)
            flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                    8: cv2.IMREAD_REDUCED_COLOR_8}[scale]
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
            if arr.shape[:2] != (height, width):
                arr = cv2.resize(arr, (width, height), interpolation=cv2.INTER_AREA)
            cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        else:
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (width, height))
            img.convert("RGB").resize((width, height), Image.BILINEAR)
    return len(members)


def cpu_seconds() -> tuple[float, float]:
    """User and system CPU seconds of this process and its finished (joined) child processes so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


def limit_seconds(raw: Path, members: list[tuple[str, str]], size: tuple[int, int], chunk: int, how: str) -> float:
    """Wall time of the bare reduced-size decode with one process per core, pool start and join included."""
    jobs = [(str(raw), members[i : i + chunk], size, how) for i in range(0, len(members), chunk)]
    start = time.perf_counter()
    with Pool(len(os.sched_getaffinity(0))) as pool:
        done = sum(pool.imap_unordered(_bare_decode, jobs))
    seconds = time.perf_counter() - start
    assert done == len(members)
    return seconds


def naive_seconds(raw: Path, members: list[tuple[str, str]], size: tuple[int, int]) -> float:
    """Wall time of a single-process full-size decode of every member, then the same resize."""
    height, width = size
    start = time.perf_counter()
    zips: dict[str, zipfile.ZipFile] = {}
    for container, member in members:
        if container not in zips:
            zips[container] = zipfile.ZipFile(raw / container)
        Image.open(io.BytesIO(zips[container].read(member))).convert("RGB").resize((width, height), Image.BILINEAR)
    seconds = time.perf_counter() - start
    for zf in zips.values():
        zf.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="train + test frames in the archive")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("HEIGHT", "WIDTH"),
                        help="prepare.image_size")
    parser.add_argument("--frame", type=int, nargs=2, default=(640, 480), metavar=("WIDTH", "HEIGHT"),
                        help="size of the archive's JPEG frames (State Farm's: 640x480)")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many")
    parser.add_argument("--naive-images", type=int, default=None,
                        help="decode only this many frames in the (slow) naive loop (default: all)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    size = tuple(args.size)
    cores = len(os.sched_getaffinity(0))
    with work_dir(args.keep, "prepare-speed-") as work:
        t = time.perf_counter()
        made = write_statefarm_archive(work / "statefarm.zip", args.images, size=tuple(args.frame))
        print(f"archive: {made['train']} train + {made['test']} test frames of {args.frame[0]}x{args.frame[1]}, "
              f"mean JPEG {made['mean_jpeg_bytes'] / 1000:.0f} KB, zip {made['zip_bytes'] / 1e6:.0f} MB "
              f"(made in {time.perf_counter() - t:.0f} s, not timed)")
        params = parse_params(statefarm_params(work / "statefarm.zip",
                                               {"prepare": {"image_size": list(size)},
                                                                                "speed": {"prepare_workers": 0}}),
                              "prepare_speed params")
        root = work / "project"
        download.run(params, "statefarm", root)  # the raw index prepare reads; not timed
        raw = root / "data" / "statefarm" / "raw"
        index = pd.concat([pd.read_csv(raw / f"{split}.csv", dtype=str) for split in ("train", "test")])
        members = list(zip(index["container"], index["member"]))
        n = len(members)
        for container in set(index["container"]):  # the archive in the page cache for every contender alike
            with open(raw / container, "rb") as f:
                while f.read(1 << 24):
                    pass
        chunk = max(16, min(prepare.CHUNK, -(-n // (4 * cores))))  # prepare's own chunking, for a like comparison
        naive_members = members[: args.naive_images] if args.naive_images else members

        cache = root / "data" / "statefarm" / "cache"

        def prepare_seconds() -> float:
            # The previous run's cache goes first, so this run's pages reuse its memory. On this VM, memory the
            # guest touches for the first time costs ~0.45 ms of system time per 230 KB image (a hypervisor
            # artefact, not the stage's: a second write of the same bytes costs a tenth); a machine that has
            # been up a while reuses its page cache likewise.
            shutil.rmtree(cache, ignore_errors=True)
            start = time.perf_counter()
            prepare.run(params, "statefarm", root)
            return time.perf_counter() - start

        contenders = {"prepare": (prepare_seconds, n),
                      "limit_pil": (lambda: limit_seconds(raw, members, size, chunk, "pil"), n),
                      "limit_opencv": (lambda: limit_seconds(raw, members, size, chunk, "opencv"), n),
                      "naive": (lambda: naive_seconds(raw, naive_members, size), len(naive_members))}
        timings: dict[str, list[float]] = {key: [] for key in contenders}
        cpu: dict[str, list[tuple[float, float]]] = {key: [] for key in contenders}  # (user, sys) ms per image
        for _ in range(args.repeats):  # interleaved, so a busy spell on the machine hits all three alike
            for key, (seconds, count) in contenders.items():
                user, system = cpu_seconds()
                timings[key].append(seconds())
                user2, system2 = cpu_seconds()
                cpu[key].append(((user2 - user) * 1e3 / count, (system2 - system) * 1e3 / count))
        print(f"prepare wrote {prepare.summary(cache)} "
              f"({sum(f.stat().st_size for f in cache.glob('*.npy')) / 1e6:.0f} MB of .npy)")

        rate = {key: count / min(timings[key]) for key, (_, count) in contenders.items()}
        rate["limit"] = max(rate["limit_pil"], rate["limit_opencv"])  # the faster bare decoder is the limit
        print(f"{n} frames {args.frame[0]}x{args.frame[1]} -> {size[0]}x{size[1]}, {cores} cores, "
              f"best of {args.repeats}; CPU: ms per image, all processes, in the best run")
        rows = [
            ("prepare.run end to end, prepare_workers 0 (one process per core)", "prepare"),
            (f"limit: bare PIL draft decode + resize, {cores} processes, nothing kept", "limit_pil"),
            (f"limit: bare OpenCV scaled decode + resize, {cores} processes, nothing kept", "limit_opencv"),
            (f"naive: 1 process, full decode + resize ({len(naive_members)} frames)", "naive"),
        ]
        print(f"  {'what':68s} {'images/s':>9s} {'CPU user':>9s} {'CPU sys':>8s} {'seconds (each run)':>20s}")
        for label, key in rows:
            runs = " ".join(f"{s:.2f}" for s in timings[key])
            user, system = cpu[key][timings[key].index(min(timings[key]))]
            if key == "prepare":  # its decoding processes are the forkserver's children, not this process's
                print(f"  {label:68s} {rate[key]:9.0f} {'-':>9s} {'-':>8s} {runs:>20s}")
                continue
            print(f"  {label:68s} {rate[key]:9.0f} {user:9.2f} {system:8.2f} {runs:>20s}")
        of_limit = rate["prepare"] / rate["limit"]
        print(f"  prepare / limit: {of_limit:.2f}x; target >= 0.8x: {'ok' if of_limit >= 0.8 else 'MISSED'}")
        print(f"  prepare / naive: {rate['prepare'] / rate['naive']:.2f}x")
        print(f"  limit / naive: {rate['limit'] / rate['naive']:.2f}x (reduced-size decoding + {cores} processes)")


if __name__ == "__main__":
    main()
