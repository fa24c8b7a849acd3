"""Benchmark (GPU only): the GPU code paths run, and what AMP and channels_last buy.

1. The demo State Farm through download -> folds -> prepare -> features on `device: cuda` (bf16 autocast), then
   fold 0's head and finetuning through the same `setup()` and `fit()` the stages use, with AMP and
   channels_last: the scores must be finite and far from chance.
2. Throughput of the default backbone (EfficientNet-Lite0 at 224x224, batch 128): a forward pass and a training
   step with fp32 (the baseline, measured in the same run), bf16 autocast, and bf16 + channels_last.

    python benchmarks/gpu_paths.py
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from pipeline.stages import download, features, finetune, folds, head, prepare
from pipeline.core.config import parse_params
from pipeline.training.devices import autocast
from pipeline.training.engine import fit, one_cycle
from pipeline.training.models import Classifier, create_trunk, create_head, save_weights
from pipeline.core.paths import Paths

REPO = Path(__file__).resolve().parents[1]


def demo_on_gpu(root: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"] = "cuda"
    params = parse_params(raw, "params.yaml with device: cuda")
    comp, device = "statefarm", torch.device("cuda")
    for stage in (download, folds, prepare, features):
        start = time.perf_counter()
        stage.run(params, comp, *(["main"] if stage is features else []), root)
        print(f"{stage.__name__.split('.')[-1]}: {time.perf_counter() - start:.1f} s")
    paths = Paths(comp, root)
    split, loaders, model, optimizer = head.setup(params, comp, "main", 0, paths)
    hp = params.comp(comp).head
    scheduler = one_cycle(optimizer, hp.epochs, len(loaders[0]), hp.warmup)
    history = fit(model.to(device), loaders[0], loaders[1], split.labels[split.val_rows], optimizer, scheduler,
                  hp.epochs, device)
    print(f"head fold 0 on GPU: val log loss {history[-1]['logloss']:.3f}, accuracy {history[-1]['accuracy']:.3f}")
    paths.fold_model("head", 0).mkdir(parents=True)
    save_weights(model, paths.fold_model("head", 0) / "head.safetensors")
    ft = params.comp(comp).finetune
    split, _, loaders, model, optimizer = finetune.setup(params, comp, "main", 0, paths, device)
    scheduler = one_cycle(optimizer, ft.epochs, len(loaders[0]), ft.warmup)
    start = time.perf_counter()
    history = fit(model, loaders[0], loaders[1], split.labels[split.val_rows], optimizer, scheduler, ft.epochs,
                  device, amp=True, channels_last=True)
    print(f"finetune fold 0 on GPU (bf16, channels_last): val log loss {history[-1]['logloss']:.3f}, accuracy "
          f"{history[-1]['accuracy']:.3f}, {time.perf_counter() - start:.1f} s; chance {math.log(10):.3f}")
    assert all(math.isfinite(h["logloss"]) for h in history)


def throughput(amp: bool, channels_last: bool, train: bool, steps: int = 20, batch: int = 128) -> float:
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    device = torch.device("cuda")
    model = Classifier(create_trunk(params.comp("statefarm").features), create_head(1280, 10, 256, 0.5))
    model = model.to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train(train)
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.set_grad_enabled(train), autocast(device, amp):
            out = model(x)
        if train:
            loss = F.cross_entropy(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    torch.backends.cudnn.benchmark = True
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    root = Path(tempfile.mkdtemp(prefix="gpu-paths-"))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        demo_on_gpu(root)
    finally:
        os.chdir(cwd)
    for train in (False, True):
        base = throughput(False, False, train)
        print(f"{'train step' if train else 'forward'}: fp32 {base:.0f} img/s (baseline)")
        for amp, cl in ((True, False), (True, True)):
            rate = throughput(amp, cl, train)
            print(f"  bf16{' + channels_last' if cl else ''}: {rate:.0f} img/s, {rate / base:.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
