"""A rough time estimate of a real run, which `prepare` prints before the hours it may take: images x pixels x the
backbone's measured seconds per pixel, on this device. The figures come from benchmarks/RESULTS.md (named beside
each); heads, loading, reports and start-up are left out, so the estimate is an order of magnitude, not a promise.
Checked once: for the real-photo run of RESULTS.md (1,400 + 240 images at 120x160, 2 cores, 552 s for the whole
run) it says 433 s. No torch import unless a GPU must be looked for."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import Params
from pipeline.core.machine import usable_cpus


@dataclass(frozen=True)
class Cost:
    """Seconds per image of a forward pass and of a training step (forward, backward, update), measured at
    `pixels` per image."""

    forward: float
    train: float
    pixels: int


MEASURED_CORES = 2
"""The CPU figures' machine: 2 cores (an AMD EPYC / Intel Xeon VM); a CPU with more cores is assumed faster in
proportion, up to 16."""
CPU = {
    # RESULTS.md P2: the features stage's bare forward, 87.2 img/s at 120x160; the channels_last note (issue 18):
    # a training step of 32 images at 120x160 in 0.70 s
    "tf_efficientnet_lite0": Cost(1 / 87.2, 0.70 / 32, 120 * 160),
    # RESULTS.md issue 18, Digit Recognizer at full size: features 26.9 s for 70,000 rows; finetuning 2,017 s for
    # 5 folds x 10 epochs x 33,600 training rows (its predictions included)
    "vgg_lesson": Cost(26.9 / 70_000, 2016.9 / (5 * 10 * 33_600), 28 * 28),
}
GPU_NAME = "an H200"
GPU = {
    # RESULTS.md GPU paths: one H200 at 224x224, batch 128, bf16 + channels_last: forward 11,986 img/s x 1.40,
    # training step 2,267 img/s x 2.61 (the network only: a slower loader or GPU takes longer)
    "tf_efficientnet_lite0": Cost(1 / (11_986 * 1.40), 1 / (2_267 * 2.61), 224 * 224),
}
REFERENCE = "tf_efficientnet_lite0"
DECODE = MEASURED_CORES / 1_724
"""prepare: seconds per image on one core (RESULTS.md P1: 1,724 img/s on 2 cores, 640x480 JPEGs to 240x320)."""


def on_gpu(device: str) -> bool:
    """Whether the stages will compute on a GPU (as training.devices.pick_device decides)."""
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def seconds(params: Params, comp_name: str, train: int, test: int, gpu: bool, folds: int | None = None,
            subsample: float | None = None, image_size: tuple[int, int] | None = None) -> tuple[float, list[str]]:
    """Rough seconds of prepare, features and finetuning (every model, `folds` folds, `subsample` of the training
    rows, the cache at `image_size`; default: params' own) on `train` + `test` images, and the backbones that have
    no figure of their own (EfficientNet-Lite0's stands in)."""
    folds = len(params.folds) if folds is None else folds
    subsample = params.subsample if subsample is None else subsample
    cache = image_size or params.comp(comp_name).prepare.image_size
    cores = min(usable_cpus(), 16)
    total, unmeasured = (train + test) * DECODE / cores, []
    for model in params.models:
        mp = params.model(comp_name, model)
        name = mp.features.backbone.split(".")[0]
        table = GPU if gpu else CPU
        if name not in table:
            unmeasured.append(mp.features.backbone)
        cost = table.get(name, table[REFERENCE])
        h, w = mp.features.image_size or cache
        scale = h * w / cost.pixels * (1 if gpu else MEASURED_CORES / cores)
        k = params.fold_count
        forwards = train * (1 + mp.features.aug_copies) + test  # the features stage
        forwards += folds * (train / k + test) * len(mp.finetune.tta)  # each fold's network predicts
        steps = folds * mp.finetune.epochs * train * (k - 1) / k * subsample
        total += scale * (cost.forward * forwards + cost.train * steps)
    return total, unmeasured


def _span(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{max(1, round(s / 60))} min"


def lines(params: Params, comp_name: str, train: int, test: int, gpu: bool | None = None) -> list[str]:
    """The estimate in one line, and on a CPU a second line: what a quick look would take instead. `gpu`: whether
    the run computes on a GPU (default: as `device` and this machine say)."""
    cp = params.comp(comp_name)
    gpu = on_gpu(params.device) if gpu is None else gpu
    total, unmeasured = seconds(params, comp_name, train, test, gpu)
    h, w = cp.prepare.image_size
    backbones = ", ".join(sorted({params.model(comp_name, m).features.backbone for m in params.models}))
    where = f"of network time on {GPU_NAME}-class GPU" if gpu else f"on this CPU ({usable_cpus()} cores)"
    caveat = f"; {', '.join(unmeasured)} timed as EfficientNet-Lite0" if unmeasured else ""
    seen = {params.model(comp_name, m).features.image_size for m in params.models} - {None, (h, w)}
    h_w = f"{h}x{w}" + "".join(f" (seen at {a}x{b})" for a, b in sorted(seen))
    out = [f"{comp_name}: {train:,} train + {test:,} test images at {h_w}, {backbones}, {len(params.folds)} "
           f"fold(s): roughly {_span(total)} {where} (rough: benchmarks/RESULTS.md's figures scaled by "
           f"pixels{caveat})"]
    if not gpu:
        small = cp.data.demo.image_size
        small = small if small and small[0] * small[1] < h * w else None
        quick, _ = seconds(params, comp_name, train, test, gpu, folds=1, subsample=0.25, image_size=small)
        size = f" -S '{comp_name}.prepare.image_size=[{small[0]},{small[1]}]'" if small else ""
        out.append(f"no GPU: for a quick look, `dvc exp run -S 'folds=[0]' -S subsample=0.25{size}` (about "
                   f"{_span(quick)}), or run on a GPU")
    return out
