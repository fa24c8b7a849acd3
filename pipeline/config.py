"""params.yaml as frozen, typed, validated dataclasses.

Every hyperparameter lives in params.yaml; this module is the only reader. Unknown keys, wrong types and values
out of range are all reported at once, each naming its dotted key, the file, and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.competitions import COMPETITIONS, get_competition
from pipeline.errors import ConfigError
from pipeline.weights import PACKAGES

TTA_VIEWS = ("identity", "hflip", "zoom")


def _range(lo=None, hi=None, doc=""):
    return {"range": (lo, hi), "doc": doc}


def _choice(*choices, doc=""):
    return {"choices": choices, "doc": doc}


@dataclass(frozen=True)
class DemoParams:
    """Size of the built-in demo archive (used when `data.source` is `demo`)."""

    train_per_class: int = field(default=40, metadata=_range(2, 100_000, "train images per class"))
    test: int = field(default=40, metadata=_range(1, 100_000, "test images"))
    drivers: int = field(
        default=6, metadata=_range(2, 1000, "train drivers, for competitions grouped by driver")
    )


@dataclass(frozen=True)
class DataParams:
    """Where the competition's archive comes from."""

    source: str = field(
        default="demo", metadata={"doc": "'demo', 'kaggle' (download with the official client), or a path to the .zip"}
    )
    demo: DemoParams = DemoParams()
    max_extract_gib: float = field(
        default=64.0, metadata=_range(1e-6, 10_000, "cap on uncompressed bytes read from the archive")
    )


@dataclass(frozen=True)
class PrepareParams:
    """The decode-once image cache."""

    image_size: tuple[int, int] = field(
        default=(64, 64), metadata={"doc": "(height, width) of cached images", "item_range": (16, 2048)}
    )
    skip_unreadable: bool = field(default=False, metadata={"doc": "false: stop at the first unreadable image, "
                                                                  "naming it; true: go on, dropping unreadable "
                                                                  "train images and leaving unreadable test images "
                                                                  "black, all listed in the cache's skipped.csv"})


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation (albumentations): `features.augment` makes the augmented feature copies,
    `finetune.augment` the finetuning batches. Two sections, so changing finetuning's augmentation does not
    recompute the features (and every head) of ~100k images."""

    hflip: float = field(default=0.0, metadata=_range(0.0, 1.0, "probability of a horizontal flip"))
    shift: float = field(default=0.1, metadata=_range(0.0, 0.5, "max translation, fraction of the side"))
    scale: float = field(default=0.1, metadata=_range(0.0, 0.5, "max zoom in or out, fraction"))
    rotate: float = field(default=10.0, metadata=_range(0.0, 180.0, "max rotation, degrees"))
    brightness_contrast: float = field(default=0.2, metadata=_range(0.0, 1.0, "max brightness/contrast change"))
    channel_shuffle: float = field(default=0.0, metadata=_range(0.0, 1.0, "probability of permuting RGB"))
    rgb_shift: float = field(default=0.0, metadata=_range(0.0, 0.5, "max shift of each colour channel, fraction "
                                                                     "of 255 (Keras's channel_shift_range / 255)"))


@dataclass(frozen=True)
class FeaturesParams:
    """The frozen backbone that precomputes conv features."""

    backbone: str = field(default="tf_efficientnet_lite0", metadata={"doc": "timm model name"})
    pretrained: bool = field(default=True, metadata={"doc": "start from pretrained weights (false: random init)"})
    weights: str = field(
        default="package",
        metadata=_choice("package", "hub", "file", doc="where pretrained weights come from: an installed pip "
                         "package (offline), the Hugging Face hub (online), or weights_file (offline)"),
    )
    weights_file: str | None = field(default=None, metadata={"doc": "local weights, with weights: file"})
    image_size: tuple[int, int] | None = field(
        default=None, metadata={"doc": "(height, width) this model sees, resized from the cache (null: the cache's "
                                       "size): one cache, models at several sizes", "item_range": (16, 2048)})
    aug_copies: int = field(default=0, metadata=_range(0, 50, "augmented copies of the train features"))
    augment: AugmentParams = AugmentParams()
    cut: int = field(default=-1, metadata=_range(-1, 63, "where to cut the backbone: -1, its whole pooled output; "
                                                        "k >= 0, the spatial map of timm feature level k (earlier "
                                                        "levels are more generic), on which the head trains a conv "
                                                        "block"))
    amp: bool = field(default=True, metadata={"doc": "mixed precision on a GPU (ignored on the CPU)"})
    channels_last: bool = field(default=True, metadata={"doc": "channels-last memory (same network, another "
                                                                 "order of arithmetic)"})


@dataclass(frozen=True)
class HeadParams:
    """The dense head trained on precomputed features."""

    hidden: int = field(default=256, metadata=_range(1, 16384, "width of the hidden layer"))
    conv_channels: int = field(default=256, metadata=_range(1, 16384, "with features.cut >= 0: channels of the conv "
                                                                      "block (3x3 conv, batch norm, ReLU, pooling) "
                                                                      "before the dense layers"))
    conv_dropout: float = field(default=0.0, metadata=_range(0.0, 0.9, "with features.cut >= 0: channel dropout "
                                                                     "(Dropout2d) after the conv block"))
    dropout: float = field(default=0.5, metadata=_range(0.0, 0.95, "dropout before the output layer"))
    input_dropout: float = field(default=0.25, metadata=_range(0.0, 0.95, "dropout on the input features (after "
                                                                           "their batch norm)"))
    dropout_schedule: str = field(
        default="constant",
        metadata=_choice("constant", "rising", doc="rising: no dropout in the first epoch, rising linearly to "
                         "`dropout` in the last (the lesson's 'increase dropout over time')"),
    )
    epochs: int = field(default=30, metadata=_range(1, 10_000, "training epochs"))
    pseudo_label: float = field(default=0.0, metadata=_range(0.0, 0.999, "confidence from which test rows, labelled "
                                                                         "by a first head, join a second head's "
                                                                         "training (0: off)"))
    lr: float = field(default=1e-3, metadata=_range(1e-7, 10.0, "peak learning rate"))
    weight_decay: float = field(default=1e-4, metadata=_range(0.0, 1.0, "AdamW weight decay"))
    batch_size: int = field(default=64, metadata=_range(2, 65536, "rows per step (batch norm needs 2)"))
    warmup: float = field(default=0.3, metadata=_range(0.0, 0.9, "fraction of steps spent warming up"))


@dataclass(frozen=True)
class FinetuneParams:
    """Full finetuning of backbone plus trained head, with augmentation."""

    epochs: int = field(default=8, metadata=_range(1, 10_000, "training epochs"))
    min_steps: int = field(default=0, metadata=_range(0, 1_000_000, "at least this many optimizer steps: a small "
                                                                      "fold trains for more epochs (each a full "
                                                                      "pass) until it has them"))
    lr: float = field(default=3e-3, metadata=_range(1e-7, 10.0, "peak learning rate of the head"))
    backbone_lr_ratio: float = field(default=0.3, metadata=_range(0.0, 1.0, "backbone lr as a fraction of lr"))
    layer_decay: float = field(default=1.0, metadata=_range(0.01, 1.0, "each earlier layer group of the backbone "
                                                                       "(timm's stages: stem, blocks, ...) at this "
                                                                       "fraction of the next one's rate (fast.ai's "
                                                                       "differential learning rates); 1: one rate"))
    unfreeze: int = field(default=-1, metadata=_range(-1, 1000, "how many of the backbone's last layer groups "
                                                                "train (-1: all; 0: only the head)"))
    init: str = field(
        default="head",
        metadata=_choice("head", "random", doc="start from the fold's trained head (the lesson's way), or from a "
                         "randomly initialised head (only to measure what the trained head is worth)"),
    )
    warmup: float = field(default=0.2, metadata=_range(0.0, 0.9, "fraction of steps spent warming up"))
    weight_decay: float = field(default=1e-4, metadata=_range(0.0, 1.0, "AdamW weight decay"))
    batch_size: int = field(default=32, metadata=_range(2, 4096, "images per step (batch norm needs 2)"))
    batch_norm: str = field(
        default="auto",
        metadata=_choice("auto", "frozen", "train", doc="the backbone's batch norm statistics: frozen (the running "
                         "ones the head's features were computed with), train (each batch's, the running ones "
                         "updated); auto: frozen for pretrained weights, train for random ones"),
    )
    sync_bn: bool = field(default=False, metadata={"doc": "data-parallel runs (launch: torchrun) on GPUs: batch "
                                                          "norm that trains normalises by the whole batch's "
                                                          "statistics; without it, by each process's share"})
    augment: AugmentParams = AugmentParams()
    tta: tuple[str, ...] = field(default=("identity",), metadata={"doc": "views averaged at prediction"})
    amp: bool = field(default=True, metadata={"doc": "mixed precision on a GPU (ignored on the CPU)"})
    channels_last: bool = field(default=True, metadata={"doc": "channels-last memory (same network, another "
                                                                 "order of arithmetic)"})


@dataclass(frozen=True)
class SpeedParams:
    """How fast, never what: every image's augmentation is seeded per image and inference is row by row, so these
    change no result. No DVC stage lists this section: changing it re-runs nothing."""

    prepare_workers: int = field(default=0, metadata=_range(0, 256, "processes reading and decoding the archive "
                                                                  "(0: one per CPU core)"))
    features_workers: int = field(default=-1, metadata=_range(-1, 256, "features' DataLoader processes resizing "
                                                                       "and augmenting while the backbone runs (-1: "
                                                                       "none on a CPU, whose cores the network "
                                                                       "uses, else one per core up to 8)"))
    features_batch_size: int = field(default=64, metadata=_range(1, 4096, "images per forward pass when "
                                                                         "computing features"))
    finetune_workers: int = field(default=-1, metadata=_range(-1, 256, "finetuning's DataLoader processes, for "
                                                                      "every loader (-1: none on a CPU, else one per "
                                                                      "core up to 8)"))
    compile: bool = field(default=False, metadata={"doc": "torch.compile the finetuned network (a GPU speed-up "
                                                          "for long runs; compiling costs a minute or more)"})


@dataclass(frozen=True)
class EnsembleParams:
    """How fold predictions are combined and calibrated into the submission."""

    members: str = field(
        default="auto",
        metadata=_choice("auto", "head", "finetune", "both", "weighted",
                         doc="which predictions of every model: the heads', the finetuned networks', both averaged, "
                         "or all with non-negative weights summing to 1 fitted on out-of-fold predictions; auto: the "
                         "best of these on the other folds"),
    )
    calibration: str = field(default="auto", metadata=_choice("auto", "temperature", "clip", "none"))
    neighbours: int = field(default=0, metadata=_range(0, 100, "average each prediction with its k nearest "
                                                                 "neighbours in feature space (0: off)"))
    neighbour_weight: float = field(default=0.5, metadata=_range(0.0, 1.0, "weight of the neighbours' average"))


@dataclass(frozen=True)
class CompetitionParams:
    """One competition's section of params.yaml."""

    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    features: FeaturesParams = FeaturesParams()
    head: HeadParams = HeadParams()
    finetune: FinetuneParams = FinetuneParams()
    ensemble: EnsembleParams = EnsembleParams()
    speed: SpeedParams = SpeedParams()
    models: dict = field(default_factory=dict, metadata={"doc": "per model named in the top-level `models`: "
                                                                 "overrides of features/head/finetune, "
                                                                 "and seed"})


MODEL_SECTIONS = ("features", "head", "finetune")


@dataclass(frozen=True)
class ModelParams:
    """One model of a competition, as its stages (features, head, finetune) see it: the competition's sections
    with the model's overrides from `<comp>.models.<name>`, and its seed (folds always use the top-level seed, so
    every model of an ensemble splits the same rows)."""

    name: str
    seed: int
    features: FeaturesParams
    head: HeadParams
    finetune: FinetuneParams


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    competitions: tuple[str, ...]
    folds: tuple[int, ...]
    seed: int
    device: str
    sections: dict[str, CompetitionParams]
    models: tuple[str, ...] = ("main",)
    resolved: dict = field(default_factory=dict, repr=False)
    launch: str = "python"
    """What starts the finetune stages (dvc.yaml's cmd): `python`, or `torchrun ...` to train each fold
    data-parallel on several GPUs."""
    fold_count: int = 0
    """k of the k-fold split (the folds stage); `folds` lists which of the k are trained and scored."""
    subsample: float = 1.0
    """The share of each fold's training images the heads and networks learn from (quick mode: e.g. 0.25)."""

    @property
    def quick(self) -> bool:
        """Fewer folds than the split has, or fewer training images: a quick look, not a full run."""
        return len(self.folds) < self.fold_count or self.subsample < 1.0

    def comp(self, name: str) -> CompetitionParams:
        """The section of competition `name`."""
        if name not in self.sections:
            get_competition(name)
            raise ConfigError(f"params.yaml has no section for competition {name!r}; add a '{name}:' section.")
        return self.sections[name]

    def model(self, comp_name: str, name: str) -> ModelParams:
        """Model `name` of competition `comp_name`: what its features, head and finetune stages read."""
        self.comp(comp_name)
        if name not in self.models:
            raise ConfigError(f"model {name!r} is not in params.yaml's models {list(self.models)}; add it to the "
                              f"top-level `models:` list and give it a `{comp_name}.models.{name}:` entry.")
        return self.resolved[comp_name, name]

    def model_key(self, comp_name: str, name: str, section: str) -> str:
        """Where model `name`'s `section` is set in params.yaml, for error messages: its override, if it has one."""
        if section in self.comp(comp_name).models.get(name, {}):
            return f"{comp_name}.models.{name}.{section}"
        return f"{comp_name}.{section}"

    def to_dict(self) -> dict:
        """Every value, defaults included, as params.yaml would spell it."""
        top = {"competitions": list(self.competitions), "folds": list(self.folds), "fold_count": self.fold_count,
               "subsample": self.subsample, "seed": self.seed, "device": self.device, "models": list(self.models),
               "launch": self.launch}
        return _plain({**top, **{name: as_dict(cp) for name, cp in self.sections.items()}})


# Speed settings that used to sit in the stages' sections (whose every change re-ran the stage).
MOVED = {"prepare.num_workers": "prepare_workers", "features.num_workers": "features_workers",
         "features.batch_size": "features_batch_size", "finetune.num_workers": "finetune_workers",
         "finetune.compile": "compile"}
TOP_KEYS = ("competitions", "folds", "fold_count", "subsample", "seed", "device", "models", "launch")
DEVICES = ("auto", "cpu", "cuda")


def _is_optional(tp) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value, tp, key: str, meta: dict, errors: list[str]):
    """Check one leaf value against its type and metadata; return the typed value or None."""
    if _is_optional(tp):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            want = f"a list of {len(args)}" if args[-1] is not Ellipsis else "a list"
            errors.append(f"{key}: expected {want}, got {value!r}")
            return None
        item_tp = args[0]
        items = [_coerce(v, item_tp, f"{key}[{i}]", {}, errors) for i, v in enumerate(value)]
        lo_hi = meta.get("item_range")
        if lo_hi and all(isinstance(v, (int, float)) for v in items):
            bad = [v for v in items if not lo_hi[0] <= v <= lo_hi[1]]
            if bad:
                errors.append(f"{key}: every item must be in [{lo_hi[0]}, {lo_hi[1]}], got {value!r}")
        return tuple(items)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected true or false, got {value!r}")
            return None
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key}: expected an integer, got {value!r}")
            return None
    elif tp is float:
        try:
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number the user meant.
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None:
            errors.append(f"{key}: expected a number, got {value!r}")
            return None
        value = number
    elif tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {value!r}")
            return None
    lo, hi = meta.get("range", (None, None))
    if lo is not None and not lo <= value <= hi:
        errors.append(f"{key}: must be between {lo} and {hi}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        errors.append(f"{key}: must be one of {allowed}; got {value!r}")
    return value


def _build(cls, raw, key: str, errors: list[str]):
    """Build dataclass `cls` from mapping `raw`, appending every problem to `errors`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{key}: expected a mapping of keys to values, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for unknown in sorted(set(raw) - set(known)):
        moved = MOVED.get(f"{key.rsplit('.', 1)[-1]}.{unknown}")
        if moved:
            errors.append(f"{key}.{unknown}: moved to {key.split('.')[0]}.speed.{moved} (it changes no result, "
                          "so no stage re-runs for it)")
            continue
        allowed = ", ".join(sorted(known))
        errors.append(f"{key}.{unknown}: unknown key; allowed keys are {allowed}")
    values = {}
    for name, f in known.items():
        if name not in raw or hints[name] is dict:  # a free-form mapping, checked by its owner
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], f"{key}.{name}", errors)
        else:
            value = _coerce(raw[name], tp, f"{key}.{name}", dict(f.metadata), errors)
            if value is not None or raw[name] is None:
                values[name] = value
    return cls(**values)


def _check_model(name: str, cp, errors: list[str], key: str | None = None) -> None:
    """Cross-field checks of a model's sections (`cp`: a CompetitionParams or ModelParams) that need the
    competition's facts; `key` prefixes the keys named (default: the competition's name)."""
    comp, key = COMPETITIONS[name], key or name
    if not comp.hflip_keeps_label:
        why = f"a horizontal flip changes {comp.title}'s labels" + (
            " (e.g. 'texting, right' becomes 'texting, left')" if "texting, right" in comp.class_descriptions
            else " (a mirrored image is another class, or none)")
        for section in ("features", "finetune"):
            hflip = getattr(cp, section).augment.hflip
            if hflip > 0:
                errors.append(f"{key}.{section}.augment.hflip: must be 0 because {why}; got {hflip}")
        if "hflip" in cp.finetune.tta:
            errors.append(f"{key}.finetune.tta: must not contain 'hflip' because {why}")
    if comp.channels == 1:
        for section in ("features", "finetune"):
            aug = getattr(cp, section).augment
            for colour in ("channel_shuffle", "rgb_shift"):
                if getattr(aug, colour) > 0:
                    errors.append(f"{key}.{section}.augment.{colour}: must be 0 because {comp.title}'s images are "
                                  f"greyscale (one channel); got {getattr(aug, colour)}")
    for view in cp.finetune.tta:
        if view not in TTA_VIEWS:
            allowed = ", ".join(repr(v) for v in TTA_VIEWS)
            errors.append(f"{key}.finetune.tta: unknown view {view!r}; allowed views are {allowed}")
    if not cp.finetune.tta:
        errors.append(f"{key}.finetune.tta: needs at least one view, e.g. ['identity']")
    _check_weights(key, cp.features, errors)


def _resolve_models(name: str, raw_section, cp: CompetitionParams, models: tuple[str, ...], seed: int,
                    errors: list[str]) -> dict:
    """Each model's ModelParams: the competition's sections updated, key by key, with `<name>.models.<model>`."""
    raw_models = (raw_section or {}).get("models") if isinstance(raw_section, dict) else None
    if raw_models is None:
        raw_models = {}
    if not isinstance(raw_models, dict):
        errors.append(f"{name}.models: expected a mapping of model name to overrides, got {raw_models!r}")
        return {}
    for extra in sorted(set(raw_models) - set(models)):
        errors.append(f"{name}.models.{extra}: is not in the top-level models {list(models)}; add it there to train "
                      "it, or remove this entry")
    resolved = {}
    for model in models:
        key = f"{name}.models.{model}"
        if model not in raw_models:
            errors.append(f"{key}: missing; every model in the top-level models needs an entry in every competition "
                          f"(DVC tracks it as the model's params): add `{model}: {{}}` under {name}.models to keep "
                          f"{name}'s sections as they are")
            continue
        over = raw_models[model] if raw_models[model] is not None else {}
        if not isinstance(over, dict):
            errors.append(f"{key}: expected a mapping (e.g. {{}} for no overrides), got {over!r}")
            continue
        for unknown in sorted(set(over) - set(MODEL_SECTIONS) - {"seed"}):
            errors.append(f"{key}.{unknown}: unknown key; a model overrides {', '.join(MODEL_SECTIONS)} or seed")
        sections = {}
        for section in MODEL_SECTIONS:
            base = as_dict(getattr(cp, section))
            patch = over.get(section) or {}
            if not isinstance(patch, dict):
                errors.append(f"{key}.{section}: expected a mapping of keys to values, got {patch!r}")
                patch = {}
            sections[section] = _build(type(getattr(cp, section)), _merged(base, patch), f"{key}.{section}", errors)
        model_seed = _coerce(over.get("seed", seed), int, f"{key}.seed", {"range": (0, 2**32 - 1)}, errors)
        mp = ModelParams(model, seed if model_seed is None else model_seed, **sections)
        _check_model(name, mp, errors, key)
        resolved[name, model] = mp
    return resolved


def _merged(base: dict, patch: dict) -> dict:
    """`base` with `patch`'s keys replaced, recursively: overriding `features.augment.hflip` keeps the other
    `features.augment` keys."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merged(base[k], v) if isinstance(base.get(k), dict) and isinstance(v, dict) else v
    return out


def _check_competition(name: str, cp: CompetitionParams, errors: list[str]) -> None:
    """Cross-field checks that need the competition's facts."""
    _check_model(name, cp, errors)
    comp = COMPETITIONS[name]
    if comp.metric != "logloss" and cp.ensemble.calibration not in ("auto", "none"):
        errors.append(f"{name}.ensemble.calibration: must be 'auto' or 'none' because {comp.title} is scored by "
                      f"{comp.metric}, which calibration does not change (it serves log loss); got "
                      f"{cp.ensemble.calibration!r}")
    source = cp.data.source
    if source not in ("demo", "kaggle") and not source.endswith(".zip"):
        errors.append(f"{name}.data.source: must be 'demo', 'kaggle' or a path to a .zip; got {source!r}")


def _check_weights(name: str, fp: FeaturesParams, errors: list[str]) -> None:
    key = f"{name}.features"
    if fp.weights_file is not None and not (fp.pretrained and fp.weights == "file"):
        errors.append(f"{key}.weights_file: is set but would be ignored (pretrained: {str(fp.pretrained).lower()}, "
                      f"weights: {fp.weights}); set pretrained: true and weights: file to use it, or weights_file: null")
    if fp.pretrained and fp.weights == "file" and fp.weights_file is None:
        errors.append(f"{key}.weights_file: weights: file needs the path of a .safetensors/.pth file; got null")
    if fp.pretrained and fp.weights == "package" and fp.backbone.split(".")[0] not in PACKAGES:
        errors.append(f"{key}.weights: 'package' has weights for {', '.join(PACKAGES)} only, not "
                      f"{fp.backbone!r}; use weights: hub (online) or weights: file")


def parse_params(raw: dict, origin: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise ConfigError listing every problem."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    for missing in [k for k in ("competitions", "folds", "seed") if k not in raw]:
        errors.append(f"{missing}: required top-level key is missing")
    competitions = _coerce(raw.get("competitions", []), tuple[str, ...], "competitions", {}, errors) or ()
    for name in competitions:
        if name not in COMPETITIONS:
            errors.append(f"competitions: unknown competition {name!r}; known: {', '.join(COMPETITIONS)}")
    folds = _coerce(raw.get("folds", []), tuple[int, ...], "folds", {}, errors) or ()
    fold_count = _coerce(raw.get("fold_count", len(folds)), int, "fold_count", {"range": (2, 100)}, errors)
    if folds and fold_count and (list(folds) != sorted(set(folds)) or not set(folds) <= set(range(fold_count))):
        errors.append(f"folds: the folds to train and score, ascending, each in 0..{fold_count - 1} (fold_count "
                      f"{fold_count} splits the rows; [0] alone is a quick look); got {list(folds)}")
    subsample = _coerce(raw.get("subsample", 1.0), float, "subsample", {"range": (0.01, 1.0)}, errors)
    seed = _coerce(raw.get("seed", 0), int, "seed", {"range": (0, 2**32 - 1)}, errors)
    device = _coerce(raw.get("device", "auto"), str, "device", {"choices": DEVICES}, errors)
    models = _coerce(raw.get("models", ["main"]), tuple[str, ...], "models", {}, errors) or ()
    launch = _coerce(raw.get("launch", "python"), str, "launch", {}, errors)
    if isinstance(launch, str) and launch != "python" and not re.fullmatch(r"torchrun( +[-\w=.:/]+)*", launch):
        errors.append(f"launch: 'python', or a torchrun command line such as 'torchrun --standalone "
                      f"--nproc-per-node 4' (dvc.yaml runs `<launch> -m pipeline.finetune ...`); got {launch!r}")
    bad = [m for m in models if not re.fullmatch(r"[a-z0-9_]+", str(m))]
    if bad or not models or len(set(models)) != len(models):
        errors.append(f"models: must be distinct names of lowercase letters, digits and _ (DVC joins stage names "
                      f"with '-'), at least one; got {list(models)}")
    sections = {}
    for key in raw:
        if key in TOP_KEYS:
            continue
        if key not in COMPETITIONS:
            allowed = ", ".join(list(TOP_KEYS) + list(COMPETITIONS))
            errors.append(f"{key}: unknown top-level key; allowed keys are {allowed}")
            continue
        sections[key] = _build(CompetitionParams, raw[key], key, errors)
        _check_competition(key, sections[key], errors)
    for name in competitions:
        if name in COMPETITIONS and name not in sections:
            sections[name] = CompetitionParams()
            _check_competition(name, sections[name], errors)
    resolved = {}
    if not errors:  # overrides are checked against valid sections, so each problem is reported once
        for name, cp in sections.items():
            resolved.update(_resolve_models(name, raw.get(name), cp, models, seed, errors))
    if not errors:
        sections = {name: dataclasses.replace(cp, models={m: resolved_raw(raw.get(name), m) for m in models})
                    for name, cp in sections.items()}
    if errors:
        raise ConfigError(f"{origin} has {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    return Params(competitions, folds, seed, device, sections, models, resolved, launch, fold_count or len(folds),
                  1.0 if subsample is None else subsample)


def resolved_raw(raw_section, model: str) -> dict:
    """A model's overrides as written (an empty mapping when it has none)."""
    models = raw_section.get("models") if isinstance(raw_section, dict) else None
    over = models.get(model) if isinstance(models, dict) else None
    return over if isinstance(over, dict) else {}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; run from the repository root, where params.yaml lives.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_params(raw, str(path))


def as_dict(obj) -> dict:
    """A params section as plain data, for saving next to the outputs it produced."""
    return _plain(dataclasses.asdict(obj))


def _plain(value):
    """Tuples to lists, recursively, so YAML and JSON writers take the value."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
