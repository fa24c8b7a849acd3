"""Benchmark P3 (issue 9): a dense-head epoch on precomputed features against a full-network epoch on the same
images, both through the training loop the stages use (`pipeline.training.engine.train_one_epoch`).

The lesson's reason to precompute: the head trains on features in a fraction of the time the network takes on
the images. Target: the head's epoch >= 50x faster. Same rows, same batch size, the shipped State Farm backbone
and head widths, at the shipped cache size (120x160); random pixels and weights (only the time is measured).

    python benchmarks/head_vs_network.py [--images 512] [--size 120 160]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.core.sections import FeaturesParams, HeadParams
from pipeline.training.engine import one_cycle, train_one_epoch
from pipeline.training.models import Classifier, create_trunk, head_for


def epoch_seconds(model, loader) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = one_cycle(optimizer, 1, len(loader), 0.3)
    start = time.perf_counter()
    train_one_epoch(model, loader, optimizer, scheduler, torch.device("cpu"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, nargs=2, default=(120, 160))
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    trunk = create_trunk(FeaturesParams(backbone="tf_efficientnet_lite0", pretrained=False))
    images = torch.randn(args.images, 3, *args.size)
    labels = torch.from_numpy(np.arange(args.images) % 10)
    with torch.no_grad():
        features = torch.cat([trunk.eval()(images[i:i + 64]) for i in range(0, len(images), 64)])
    hp = HeadParams()
    head = head_for(tuple(features.shape[1:]), 10, hp)
    network = Classifier(trunk, head_for(tuple(features.shape[1:]), 10, hp))
    batches = {"head": DataLoader(TensorDataset(features, labels), batch_size=args.batch, shuffle=True),
               "network": DataLoader(TensorDataset(images, labels), batch_size=args.batch, shuffle=True)}
    epoch_seconds(head, batches["head"])  # warm-up: first-call overheads are not what is compared
    head_s = min(epoch_seconds(head, batches["head"]) for _ in range(3))
    network_s = epoch_seconds(network, batches["network"])
    print(f"{args.images} images at {args.size[0]}x{args.size[1]}, batch {args.batch}, {torch.get_num_threads()} "
          f"threads, CPU")
    print(f"  dense head on precomputed {features.shape[1]} features: {head_s:.3f} s per epoch")
    print(f"  whole network (tf_efficientnet_lite0 + head) on the images: {network_s:.1f} s per epoch")
    ratio = network_s / head_s
    print(f"  head epoch {ratio:.0f}x faster (target >= 50x): {'ok' if ratio >= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
