"""Benchmark P2: the features stage end to end against the bare forward pass of its backbone on the same images.

A small cache is made first and not timed (a synthetic State Farm archive of photo-like frames, see
synthetic_statefarm.py, through `pipeline.stages.download.run` and `pipeline.stages.prepare.run`, 120x160 by default). Then,
in one run:

- stage: `pipeline.stages.features.run` end to end (backbone creation, the DataLoader over the memory-mapped cache,
  the forward passes, the float16 .npy files, the weights file), with `features.aug_copies: 0`, for each
  `speed.features_workers` asked for (default 0 and 2; the shipped value is 2), and once with `aug_copies: 1`
  (the shipped value: train images go through the backbone twice, once augmented);
- baseline: the same backbone (`pipeline.training.models.create_trunk` with the same FeaturesParams, eval mode,
  `torch.no_grad`) over the same images already in memory as uint8 NCHW tensors, in batches of
  `speed.features_batch_size`, timing only the forward and the float16 copy to numpy (what the stage keeps).

Target: the stage's images/s (aug_copies 0) >= 0.9x the baseline's. Every image the backbone sees counts, so
with aug_copies 1 the train images count twice. On a CPU the backbone's threads and the DataLoader workers share
the cores, so `features_workers` 2 may cost more than it brings there; both are printed. The backbone's creation is a
fixed cost per stage run, measured apart and printed, since it weighs more on a small cache than on a real one.
Weights do not change the speed: random ones by default (--pretrained: the shipped package weights).

    python benchmarks/features_speed.py [--images 1000] [--size 120 160] [--workers 0 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_statefarm import work_dir, statefarm_params, write_statefarm_archive  # noqa: E402

from pipeline.stages import download, features, prepare  # noqa: E402
from pipeline.data.cache import load_cache  # noqa: E402
from pipeline.core.config import parse_params  # noqa: E402
from pipeline.training.models import create_trunk  # noqa: E402


@torch.no_grad()
def forward_seconds(trunk, images: torch.Tensor, batch_size: int) -> float:
    """The bare forward over uint8 NCHW `images` in batches, with the float16 copy to numpy the stage keeps."""
    out = np.empty((len(images), trunk.num_features), np.float16)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        f = trunk(images[i : i + batch_size])
        out[i : i + len(f)] = f.float().cpu().numpy().astype(np.float16)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="train + test frames in the cache")
    parser.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("HEIGHT", "WIDTH"),
                        help="prepare.image_size (the backbone sees this size)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--pretrained", action="store_true", help="the shipped package weights (default: random)")
    parser.add_argument("--batch", type=int, default=None, help="speed.features_batch_size (default: params.yaml's)")
    parser.add_argument("--workers", type=int, nargs="+", default=(0, 2), help="speed.features_workers to time")
    parser.add_argument("--aug-workers", type=int, default=2, help="speed.features_workers of the aug_copies 1 run")
    parser.add_argument("--no-aug", action="store_true", help="skip the aug_copies 1 run")
    parser.add_argument("--repeats", type=int, default=2, help="timings are the best of this many")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    size = tuple(args.size)

    def params(aug_copies: int, workers: int = 0):
        fp = {"backbone": args.backbone, "pretrained": args.pretrained, "weights": "package",
              "image_size": None, "cut": -1, "aug_copies": aug_copies}
        speed = {"features_workers": workers, **({"features_batch_size": args.batch} if args.batch else {})}
        return parse_params(statefarm_params(work / "statefarm.zip", {"prepare": {"image_size": list(size)},
                                                                      "features": fp, "speed": speed}),
                            "features_speed params")

    with work_dir(args.keep, "features-speed-") as work:
        root = work / "project"
        frame = (size[1], size[0])  # frames made at the cache's size: only the cache matters here
        made = write_statefarm_archive(work / "statefarm.zip", args.images, size=frame)
        base = params(aug_copies=0)
        download.run(base, "statefarm", root)
        prepare.run(base, "statefarm", root)
        cache = root / "data" / "statefarm" / "cache"
        arrays = [load_cache(cache, split)[0] for split in ("test", "train")]
        n_train, n = len(arrays[1]), sum(len(a) for a in arrays)
        images = torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
        fp, batch = base.model("statefarm", "main").features, base.comp("statefarm").speed.features_batch_size
        print(f"cache: {made['train']} train + {made['test']} test photo frames at {size[0]}x{size[1]} (not timed); "
              f"{fp.backbone} ({'package weights' if fp.pretrained else 'random weights'}), batch {batch}, "
              f"{torch.get_num_threads()} torch threads, CPU")

        trunk = create_trunk(fp, image_size=size).eval()
        forward_seconds(trunk, images[: 2 * batch], batch)  # warm-up: first-call costs aside
        t = time.perf_counter()
        create_trunk(fp, image_size=size)
        create_s = time.perf_counter() - t

        runs = [(f"features.run, aug_copies 0, features_workers {w}", {"aug_copies": 0, "workers": w}, n)
                for w in args.workers]
        if not args.no_aug:
            runs.append((f"features.run, aug_copies 1, features_workers {args.aug_workers}",
                         {"aug_copies": 1, "workers": args.aug_workers}, n + n_train))
        timings: dict[str, list[float]] = {"baseline": []} | {label: [] for label, _, _ in runs}
        for _ in range(args.repeats):  # interleaved, so a busy spell on the machine hits all alike
            timings["baseline"].append(forward_seconds(trunk, images, batch))
            for label, changes, _ in runs:
                p = params(**changes)
                start = time.perf_counter()
                features.run(p, "statefarm", "main", root)
                timings[label].append(time.perf_counter() - start)
        out = root / "data" / "statefarm" / "features" / "main"
        print(f"stage wrote {features.summary(out)}")

        base_rate = n / min(timings["baseline"])
        print(f"{n} images, best of {args.repeats}:")
        print(f"  {'what':52s} {'images':>7s} {'images/s':>9s} {'x baseline':>11s} {'seconds (each run)':>20s}")
        print(f"  {'baseline: bare forward + float16 copy, in memory':52s} {n:7d} {base_rate:9.1f} {1:11.2f} "
              f"{' '.join(f'{s:.2f}' for s in timings['baseline']):>20s}")
        ratios = {}
        for label, changes, count in runs:
            rate = count / min(timings[label])
            ratios[label] = rate / base_rate
            print(f"  {label:52s} {count:7d} {rate:9.1f} {ratios[label]:11.2f} "
                  f"{' '.join(f'{s:.2f}' for s in timings[label]):>20s}")
        print(f"  backbone creation (a fixed cost inside every stage run): {create_s:.2f} s")
        for label, changes, count in runs:
            if changes["aug_copies"]:
                continue
            ratio = ratios[label]
            net = count / max(min(timings[label]) - create_s, 1e-9) / base_rate
            print(f"  {label}: {ratio:.2f}x the bare forward (without the backbone's creation: {net:.2f}x); "
                  f"target >= 0.9x: {'ok' if ratio >= 0.9 else 'MISSED'}")
        best = max((r, label) for label, r in ratios.items() if "aug_copies 0" in label)
        shipped = parse_params(statefarm_params(work / "statefarm.zip"), "params.yaml").comp("statefarm").speed
        print(f"  fastest speed.features_workers here: {best[1].rsplit(' ', 1)[-1]} "
              f"(params.yaml ships {shipped.features_workers})")


if __name__ == "__main__":
    main()
