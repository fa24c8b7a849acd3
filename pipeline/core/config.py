"""params.yaml, validated into frozen typed objects (the sections are pydantic models, in sections.py).

This module is the only reader of params.yaml. Every problem (unknown key, wrong type, value out of range, a
setting the competition's facts forbid) is reported at once, one line each, naming its dotted key and what is
allowed. It also resolves what depends on `data.source` (`effective`): the stages read the values in effect.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core.competitions import COMPETITIONS, get_competition
from pipeline.core.errors import ConfigError
from pipeline.core.sections import MODEL_SECTIONS, PACKAGES, TTA_VIEWS, CompetitionParams, FeaturesParams
from pipeline.core.sections import ModelParams, TopLevel


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml: the top-level keys (see sections.TopLevel), each competition's section, and
    each (competition, model)'s resolved sections."""

    competitions: tuple[str, ...]
    folds: tuple[int, ...]
    seed: int
    device: str
    sections: dict[str, CompetitionParams]
    models: tuple[str, ...] = ("main",)
    resolved: dict = field(default_factory=dict, repr=False)
    launch: str = "python"
    fold_count: int = 0
    subsample: float = 1.0

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
        return {**top, **{name: as_dict(cp) for name, cp in self.sections.items()}}


# Speed settings that used to sit in the stages' sections (whose every change re-ran the stage).
MOVED = {"prepare.num_workers": "prepare_workers", "features.num_workers": "features_workers",
         "features.batch_size": "features_batch_size", "finetune.num_workers": "finetune_workers",
         "finetune.compile": "compile"}
TOP_KEYS = tuple(TopLevel.model_fields)
_PHRASES = {"int_type": "expected an integer", "int_parsing": "expected an integer", "int_from_float":
            "expected an integer", "bool_type": "expected true or false", "bool_parsing": "expected true or false",
            "float_type": "expected a number", "float_parsing": "expected a number", "string_type":
            "expected a string", "tuple_type": "expected a list", "model_type": "expected a mapping of keys to values",
            "dict_type": "expected a mapping of keys to values"}


def _validate(cls: type[BaseModel], raw, key: str, errors: list[str]):
    """`cls` from `raw`, or None with one line per problem appended to `errors`, each naming `key`.<field>."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        errors.extend(_problem(cls, err, key) for err in e.errors())
        return None


def _problem(cls: type[BaseModel], err: dict, key: str) -> str:
    """One line for one of pydantic's errors: the dotted key, what is allowed, and the value found."""
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx", {})
    parent = cls
    for part in loc[:-1]:  # the model holding the failing field, when there is one
        ann = parent.model_fields[part].annotation if isinstance(parent, type) and part in parent.model_fields else 0
        parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    name = ".".join([key] * bool(key) + [f"[{p}]" if isinstance(p, int) else p for p in loc]).replace(".[", "[")
    if kind == "extra_forbidden":
        moved = MOVED.get(".".join(([key.rsplit(".", 1)[-1]] + list(loc))[-2:]))
        if moved:
            return f"{name}: moved to {key.split('.')[0]}.speed.{moved} (it changes no result, so no stage re-runs for it)"
        allowed = sorted(parent.model_fields) if parent else []
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return (f"{name}: unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
                + f"; allowed keys are {', '.join(allowed)}")
    if kind == "missing":
        return f"{name}: required key is missing"
    if kind in ("greater_than_equal", "less_than_equal"):
        info = parent.model_fields.get(loc[-1]) if parent and isinstance(loc[-1], str) else None
        bounds = {type(m).__name__: m for m in (info.metadata if info else [])}
        if "Ge" in bounds and "Le" in bounds:
            what = f"must be between {bounds['Ge'].ge} and {bounds['Le'].le}"
        else:
            what = f"must be at least {ctx['ge']}" if "ge" in ctx else f"must be at most {ctx['le']}"
    elif kind == "literal_error":
        what = f"must be one of {ctx['expected']}"
    elif kind in ("too_short", "too_long"):
        what = f"expected a list of {ctx.get('max_length', ctx.get('min_length'))}"
    else:
        what = _PHRASES.get(kind, err["msg"])
    return f"{name}: {what}, got {err['input']!r}"


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
    ft = cp.finetune
    if (ft.mixup or ft.cutmix) and ft.batch_size % 2:
        errors.append(f"{key}.finetune.batch_size: must be even with mixup or cutmix (timm's Mixup pairs each image "
                      f"with another of its batch); got {ft.batch_size}")
    _check_weights(key, cp.features, errors)


def _resolve_models(name: str, cp: CompetitionParams, models: tuple[str, ...], seed: int, errors: list[str]) -> dict:
    """Each model's ModelParams: the competition's sections updated, key by key, with `<name>.models.<model>`."""
    raw_models = cp.models
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
            patch = over.get(section) or {}
            if not isinstance(patch, dict):
                errors.append(f"{key}.{section}: expected a mapping of keys to values, got {patch!r}")
                patch = {}
            sections[section] = _merged(as_dict(getattr(cp, section)), patch)
        mp = _validate(ModelParams, {"name": model, "seed": over.get("seed", seed), **sections}, key, errors)
        if mp is None:
            continue
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
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    errors: list[str] = []
    top = _validate(TopLevel, raw, "", errors)
    listed = raw.get("competitions")
    for name in listed if isinstance(listed, list) else []:  # a non-list is pydantic's error, not one per letter
        if name not in COMPETITIONS:
            errors.append(f"competitions: unknown competition {name!r}; known: {', '.join(COMPETITIONS)}")
    if top:
        if top.folds and (list(top.folds) != sorted(set(top.folds)) or not set(top.folds) <= set(range(top.fold_count))):
            errors.append(f"folds: the folds to train and score, ascending, each in 0..{top.fold_count - 1} "
                          f"(fold_count {top.fold_count} splits the rows; [0] alone is a quick look); got {list(top.folds)}")
        if top.launch != "python" and not re.fullmatch(r"torchrun( +[-\w=.:/]+)*", top.launch):
            errors.append(f"launch: 'python', or a torchrun command line such as 'torchrun --standalone "
                          f"--nproc-per-node 4' (dvc.yaml runs `<launch> -m pipeline.stages.finetune ...`); got {top.launch!r}")
        if (not top.models or len(set(top.models)) != len(top.models)
                or not all(re.fullmatch(r"[a-z0-9_]+", m) for m in top.models)):
            errors.append(f"models: must be distinct names of lowercase letters, digits and _ (DVC joins stage names "
                          f"with '-'), at least one; got {list(top.models)}")
    sections = {}
    for key in raw:
        if key in TOP_KEYS:
            continue
        if key not in COMPETITIONS:
            near = difflib.get_close_matches(key, list(TOP_KEYS) + list(COMPETITIONS), n=1)
            errors.append(f"{key}: unknown top-level key" + (f" (did you mean {near[0]!r}?)" if near else "")
                          + f"; allowed keys are {', '.join(list(TOP_KEYS) + list(COMPETITIONS))}")
            continue
        sections[key] = _validate(CompetitionParams, raw[key], key, errors)
    for name in top.competitions if top else ():
        if name in COMPETITIONS and name not in sections:
            sections[name] = CompetitionParams()
    for name, cp in sections.items():
        if cp is not None:
            _check_competition(name, cp, errors)
    if errors:  # overrides are checked against valid sections, so each problem is reported once
        raise ConfigError(f"{origin} has {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    resolved = {}
    for name, cp in sections.items():
        resolved.update(_resolve_models(name, cp, top.models, top.seed, errors))
    if errors:
        raise ConfigError(f"{origin} has {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    sections = {name: effective(cp).model_copy(update={"models": {m: resolved_raw(cp.models, m)
                                                                  for m in top.models}})
                for name, cp in sections.items()}
    return Params(top.competitions, top.folds, top.seed, top.device, sections, top.models, resolved, top.launch,
                  top.fold_count, top.subsample)


RESOLVED_FROM = {"prepare": "data"}
"""Sections whose values at load depend on another section (`effective`): dvc.yaml lists both for every stage that
reads the first (tests/test_dvc_yaml.py), so DVC re-runs it when either changes."""


def effective(cp: CompetitionParams) -> CompetitionParams:
    """The section as the stages read it. `prepare.image_size` is the real archive's; while `data.source` is `demo`
    the demo's own size, `data.demo.image_size` (when set), takes its place: setting the source alone switches
    between the demo's and the real recipe. The one place that chooses."""
    demo_size = cp.data.demo.image_size
    if cp.data.source != "demo" or demo_size is None:
        return cp
    return cp.model_copy(update={"prepare": cp.prepare.model_copy(update={"image_size": demo_size})})


def with_changes(raw: dict, changes: dict) -> dict:
    """`raw` (changed in place) with each dotted key of `changes` set, as `dvc exp run -S` sets params.yaml."""
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


def resolved_raw(models, model: str) -> dict:
    """A model's overrides as written in `<comp>.models` (an empty mapping when it has none)."""
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


def as_dict(obj: BaseModel) -> dict:
    """A params section as plain data (lists, not tuples), for saving next to the outputs it produced."""
    return obj.model_dump(mode="json")
