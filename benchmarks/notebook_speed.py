"""Benchmark (issue 29): a code competition's notebook against `dvc repro`'s own prediction, on the same images.

Needs a finished `dvc repro` of the competition in this checkout (its trained networks). A hidden test set of
`--images` new images (`pipeline.data.demo_code.hidden_test`) is predicted twice, on this machine, in this run:
- the pipeline's way, stage by stage as the stages do it: `prepare`'s decoder (its process pool, into a `.npy`
  cache), the `features` stage's extraction (into a float16 `.npy`), each fold head's and each fold network's
  predictions with their test-time views (from the files, as the head and finetune stages read them);
- the notebook's way: `pipeline.kernel.predict.main` on the dataset `pipeline notebook` wrote (decode in threads,
  a chunk at a time in memory).
Model loading is left out of both (the notebook prints it apart). Prints images/s of each and their ratio (the aim:
the notebook at least 0.9x), and with `--json` writes them for RESULTS.

    python benchmarks/notebook_speed.py cactus --images 2000 --json benchmarks/results/notebook_speed_cactus.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pipeline.commands import notebook
from pipeline.core.competitions import get_competition
from pipeline.core.config import load_params
from pipeline.core.io import NpyRows, read_json
from pipeline.core.machine import environment
from pipeline.core.paths import Paths
from pipeline.data.datasets import ImageDataset, build_transform
from pipeline.data.demo_code import hidden_test
from pipeline.kernel import predict as kernel
from pipeline.scoring.choosing import Choice, log_average
from pipeline.scoring.submission import make_submission
from pipeline.stages.prepare import decode_all
from pipeline.training.devices import pick_device
from pipeline.training.engine import predict
from pipeline.training.inference import HEAD_BATCH, FeatureRows, extract, load_head, load_network, load_trunk


def pipeline_way(comp_name: str, images: Path, work: Path) -> tuple[float, dict]:
    """Seconds the stages' own code takes to predict the images in `images` (a test folder as Kaggle mounts it),
    and each weighed member's fold-averaged probabilities."""
    comp, params = get_competition(comp_name), load_params()
    cp, cv = params.comp(comp_name), read_json(Paths(comp_name).cv)
    sample = pd.read_csv(images / "sample_submission.csv", dtype=str, keep_default_na=False)
    test_dir = comp.test_pattern.split("/")[0]
    with zipfile.ZipFile(work / "test.zip", "w", zipfile.ZIP_STORED) as zf:  # prepare reads images from a zip
        for name in sample[comp.id_column]:
            zf.write(images / test_dir / name, f"{test_dir}/{name}")
    index = pd.DataFrame({"container": "test.zip", "member": [f"{test_dir}/{n}" for n in sample[comp.id_column]]})
    device, models, out = pick_device(params.device), {}, {}
    for model in params.models:  # loaded before the clock starts, as the notebook's are
        used = [s for s in ("head", "finetune") if cv["choice"]["weights"].get(f"{model}/{s}", 0) > 0]
        paths, mp = Paths(comp_name, model=model), params.model(comp_name, model)
        meta = read_json(paths.features / "meta.json")
        trunk = load_trunk(mp.features, paths.features / "backbone.safetensors", comp.channels).to(device).eval()
        heads = [load_head(meta["shape"], comp.num_classes, mp.head, paths.fold_model("head", k) / "head.safetensors")
                 .eval() for k in params.folds] if "head" in used else []
        nets = [load_network(mp, meta["shape"], comp.channels, comp.num_classes,
                             paths.fold_model("finetune", k) / "model.safetensors").eval()
                for k in params.folds] if "finetune" in used else []
        for network in [trunk] + nets:
            if mp.features.channels_last:
                network.to(memory_format=torch.channels_last)
        models[model] = (mp, meta, trunk, heads, nets)
    start = time.perf_counter()
    cache = NpyRows(work / "test.npy", np.uint8, (len(index), *cp.prepare.image_size, comp.channels))
    decode_all({"test": (index, cache)}, work, cp.speed.prepare_workers, False, "prepare's decode")
    cached = np.load(work / "test.npy", mmap_mode="r")
    for model, (mp, meta, trunk, heads, nets) in models.items():
        data = ImageDataset(cached, np.arange(len(cached)), build_transform(size=meta.get("image_size")))
        if heads:
            feats = NpyRows(work / f"{model}-features.npy", np.float16, (len(cached), *meta["shape"]))
            extract(trunk, data, feats, mp.features, cp.speed, device, "features stage")
            rows = np.load(feats.path, mmap_mode="r")
            loader = DataLoader(FeatureRows([(rows, np.arange(len(rows)))]), batch_size=HEAD_BATCH)
            out[f"{model}/head"] = log_average([predict(h, loader, device) for h in heads])
        if nets:
            loader = DataLoader(data, batch_size=mp.finetune.batch_size * 2)
            ft = mp.finetune
            out[f"{model}/finetune"] = log_average([predict(n, loader, device, ft.tta, amp=ft.amp,
                                                            channels_last=ft.channels_last) for n in nets])
    return time.perf_counter() - start, out


def largest_difference(comp_name: str, members: dict, competition: Path, written: Path) -> float:
    """The largest difference between the notebook's submission and the one the stages' predictions make (the
    ensemble's choice applied as the ensemble stage applies it); for labels, the share that differ."""
    comp = get_competition(comp_name)
    choice = Choice(**read_json(Paths(comp_name).cv)["choice"])
    sample = pd.read_csv(competition / "sample_submission.csv", dtype={comp.id_column: str}, keep_default_na=False)
    ours = make_submission(comp, sample[comp.id_column], choice.apply({m: p.astype(np.float32).astype(np.float64)
                                                                       for m, p in members.items()}), choice.threshold)
    theirs = pd.read_csv(written, dtype={comp.id_column: str}, keep_default_na=False)
    column = comp.submission_columns[0]
    if comp.submission == "label":
        return float((ours[column].astype(str).to_numpy() != theirs[column].astype(str).to_numpy()).mean())
    columns = list(comp.submission_columns)
    return float(np.abs(ours[columns].to_numpy(float) - theirs[columns].to_numpy(float)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comp", choices=["cassava", "cactus"])
    parser.add_argument("--images", type=int, default=1000, help="hidden test images to predict")
    parser.add_argument("--seed", type=int, default=11, help="seed of the hidden test images")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    comp = get_competition(args.comp)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        competition = work / "input" / comp.slug
        hidden_test(comp, args.images, args.seed, competition)
        made = notebook.run(args.comp, work / "nb", owner="benchmark")
        seconds_pipeline, members = pipeline_way(args.comp, competition, work)
        notebook_run = kernel.main(made["dataset"] / "bundle", competition, work / "submission.csv")
        difference = largest_difference(args.comp, members, competition, work / "submission.csv")
    rate_pipeline = args.images / seconds_pipeline
    figures = {"competition": args.comp, "images": args.images, "environment": environment(pick_device("auto")),
               "pipeline_seconds": round(seconds_pipeline, 2), "pipeline_images_per_second": round(rate_pipeline, 1),
               "notebook_seconds": round(notebook_run["seconds"], 2),
               "notebook_images_per_second": round(notebook_run["images_per_second"], 1),
               "notebook_setup_seconds": round(notebook_run["setup_seconds"], 2),
               "ratio": round(notebook_run["images_per_second"] / rate_pipeline, 3),
               "dataset_mib": round(made["bytes"] / 2**20, 1), "members": made["members"],
               "largest_difference": difference}
    print(f"{args.comp}, {args.images} images: pipeline stages {rate_pipeline:.1f} images/s, notebook "
          f"{figures['notebook_images_per_second']:.1f} images/s: {figures['ratio']:.2f}x (aim >= 0.9x); dataset "
          f"{figures['dataset_mib']} MiB for {', '.join(made['members'])}; the two submissions differ by at most "
          f"{difference:.2g}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
