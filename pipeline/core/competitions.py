"""The competitions this pipeline knows: one record each, `pipeline/competitions/<name>.yaml`, the only place their
facts live (see docs/competitions.md). Stages read a record and never branch on a competition's name; each of a
competition's stages depends on its own record, so adding or editing one re-runs that competition's stages only.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.core.errors import ConfigError

RECORDS = Path(__file__).resolve().parents[1] / "competitions"
LAYOUTS = ("images", "pixels")
SUBMISSIONS = ("probs", "binary", "label")
METRICS = ("logloss", "accuracy", "roc_auc", "f1_micro", "f1_macro")
SUBMITS = ("csv", "notebook")
ACCELERATORS = ("none", "gpu")


@dataclass(frozen=True)
class Competition:
    """Everything the pipeline needs to know about one Kaggle image-classification competition.

    Train labels come from the image's path (a class folder, or the label in the file name: groups `label` and
    `id` of `train_pattern`), or from `labels_file`, a CSV naming each image (`labels_id`) and its class
    (`labels_label`) and optionally its group. With `pixels`, images are not files but rows of a CSV (`train.csv`
    and `test.csv` of Digit Recognizer), `pixels` giving their (height, width)."""

    name: str
    """Short name used in params.yaml, paths and stage names."""
    slug: str
    """Kaggle's competition slug (`kaggle competitions download -c <slug>`)."""
    title: str
    classes: tuple[str, ...]
    """Class labels in the order of the model's outputs, spelt as the labels in the archive are."""
    class_descriptions: tuple[str, ...]
    train_pattern: str
    """Regex over a train image's path (below the optional `imgs/` folder); groups `id` and, unless `labels_file`
    gives the labels, `label`. With `pixels`: the name of the train CSV."""
    test_pattern: str
    """Regex over a test image's path; group `id` is the id written to the submission. With `pixels`: the name of
    the test CSV (a test row's id is its number, from 1)."""
    id_column: str
    """Id column of sample_submission.csv and of our submission."""
    submission_columns: tuple[str, ...]
    """The submission's columns after the id: one probability per class (`probs`), P(last class) of a binary
    problem (`binary`), or the predicted class (`label`)."""
    labels_file: str | None = None
    """A CSV in the archive listing the train images, with their label and group where the paths lack them."""
    group_column: str | None = None
    """Column of `labels_file` that folds must be grouped by (no group on both sides of a split); None: the
    folds are stratified by class."""
    hflip_keeps_label: bool = True
    """Whether a horizontal flip is label-preserving (allowed in augmentation and TTA)."""
    group_noun: str = "group"
    """What one group is, in words (State Farm: a driver)."""
    test_images: int | None = None
    """Rows of the real competition's sample_submission.csv: a submission with another count was not made from
    the real archive (`pipeline submit` refuses it)."""
    submission: str = "probs"
    """`probs`, `binary` or `label` (see `submission_columns`)."""
    metric: str = "logloss"
    """Kaggle's metric: logloss, accuracy, roc_auc, f1_micro or f1_macro. Calibration is fitted for log loss
    only; label submissions of a binary problem get a threshold fitted for their metric."""
    labels_id: str = "id"
    """Column of `labels_file` holding the image's id (as `train_pattern`'s `id` group spells it)."""
    labels_label: str = "label"
    """Column of `labels_file` (with `pixels`: of the train CSV) holding the class."""
    channels: int = 3
    """3 for colour, 1 for greyscale: the decoded cache's and the network's input channels."""
    pixels: tuple[int, int] | None = None
    """(height, width) of images stored as CSV rows of pixel values (`pixel0`, `pixel1`, ...), row-major."""
    submit: str = "csv"
    """How Kaggle takes a submission: `csv` (an upload of the file) or `notebook` (a code competition: Kaggle
    re-runs a notebook, internet off, on the hidden test set; `pipeline notebook` writes it)."""
    notebook_accelerator: str = "none"
    """With `submit: notebook`: `gpu` to ask for one (the notebook uses it when there is one), or `none`."""
    notebook_hours: float = 9.0
    """With `submit: notebook`: the competition's run-time limit for the whole notebook, in hours."""
    notebook_internet: bool = False
    """With `submit: notebook`: always false; Kaggle scores code submissions only from notebooks without internet."""
    pixels_id: str | None = None
    """With `pixels`: the test CSV's column of ids before the pixels (Kannada MNIST's `id`); None: a test row's id
    is its row number from 1 (Digit Recognizer's ImageId)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def binary(self) -> bool:
        return self.submission == "binary"

    @property
    def layout(self) -> str:
        return "pixels" if self.pixels else "images"

    def match_train(self, path: str) -> re.Match | None:
        return re.fullmatch(self.train_pattern, path)

    def match_test(self, path: str) -> re.Match | None:
        return re.fullmatch(self.test_pattern, path)

    def check(self) -> None:
        """Raise ConfigError naming every inconsistent fact of this record (a new entry's typos)."""
        problems = []
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            problems.append("the name (the file's stem) must be lowercase letters, digits and _ (it names DVC stages)")
        for key, value, allowed in (("submission", self.submission, SUBMISSIONS), ("metric", self.metric, METRICS)):
            if value not in allowed:
                problems.append(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 (greyscale) or 3 (colour); got {self.channels!r}")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            problems.append(f"classes must be at least 2 distinct labels; got {self.classes!r}")
        if len(self.class_descriptions) != len(self.classes):
            problems.append("class_descriptions must give one description per class")
        want = {"probs": len(self.classes), "binary": 1, "label": 1}.get(self.submission)
        if want is not None and len(self.submission_columns) != want:
            problems.append(f"a {self.submission!r} submission has {want} column(s) after the id; "
                            f"submission_columns has {len(self.submission_columns)}")
        if self.submission == "binary" and len(self.classes) != 2:
            problems.append("a 'binary' submission needs exactly 2 classes")
        if self.metric == "roc_auc" and self.submission == "label":
            problems.append("roc_auc ranks probabilities; a 'label' submission has none")
        if self.metric == "logloss" and self.submission == "label":
            problems.append("logloss scores probabilities; a 'label' submission has none")
        if self.submit not in SUBMITS:
            problems.append(f"submit must be one of {', '.join(SUBMITS)}; got {self.submit!r}")
        if self.notebook_accelerator not in ACCELERATORS:
            problems.append(f"notebook_accelerator must be one of {', '.join(ACCELERATORS)}; got "
                            f"{self.notebook_accelerator!r}")
        if not (isinstance(self.notebook_hours, (int, float)) and 0 < self.notebook_hours <= 24):
            problems.append(f"notebook_hours must be the run-time limit in hours (0 to 24]; got {self.notebook_hours!r}")
        if self.submit == "notebook" and self.pixels:
            problems.append("submit: notebook reads test image files; a pixel-CSV competition's notebook is not supported")
        if self.notebook_internet is not False:
            problems.append("notebook_internet must be false: Kaggle scores code submissions only from notebooks "
                            "with the internet off")
        if self.pixels_id and not self.pixels:
            problems.append("pixels_id is a column of a pixel CSV: set pixels too, or drop it")
        if self.pixels and self.channels != 1:
            problems.append("pixels (images as CSV rows) are greyscale: set channels to 1")
        if not self.pixels:
            groups = {}
            for key in ("train_pattern", "test_pattern"):
                try:
                    groups[key] = re.compile(getattr(self, key)).groupindex
                except re.error as e:
                    groups[key] = {"id": 0, "label": 0}  # one problem per pattern
                    problems.append(f"{key} is not a regex ({e})")
                if "id" not in groups[key]:
                    problems.append(f"{key} needs an (?P<id>...) group")
            if "label" not in groups["train_pattern"] and not self.labels_file:
                problems.append("train_pattern needs a (?P<label>...) group, or labels_file must give the labels")
        if self.group_column and not self.labels_file:
            problems.append("group_column is a column of labels_file, which is not set")
        if problems:
            raise ConfigError(f"competition record {self.name!r}: " + "; ".join(problems))


def load_record(path: Path) -> Competition:
    """The checked record in `path` (YAML: the fields of Competition but `name`, which is the file's stem)."""
    where = f"{path} (a competition record)"
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of facts, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Competition)}
    unknown = sorted(set(raw) - set(fields) | ({"name"} & set(raw)))
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n != "name"]
    missing = [n for n in required if n not in raw]
    if unknown or missing:
        raise ConfigError(f"{where}: " + "; ".join(
            [f"unknown key(s) {', '.join(unknown)} (the name is the file's stem); allowed: "
             f"{', '.join(n for n in fields if n != 'name')}"] * bool(unknown)
            + [f"missing {', '.join(missing)}"] * bool(missing)))
    comp = Competition(name=path.stem, **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    try:
        comp.check()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return comp


COMPETITIONS: dict[str, Competition] = {p.stem: load_record(p) for p in sorted(RECORDS.glob("*.yaml"))}


def register(comp: Competition) -> Competition:
    """Add a competition record (checked) to the registry, so params.yaml and every stage know it."""
    comp.check()
    COMPETITIONS[comp.name] = comp
    return comp


def get_competition(name: str) -> Competition:
    """The record for `name`; a clear error listing the known names otherwise."""
    try:
        return COMPETITIONS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in COMPETITIONS)
        raise ConfigError(f"Unknown competition {name!r}; known competitions are {known}.") from None
