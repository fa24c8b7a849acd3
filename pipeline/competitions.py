"""The competitions this pipeline knows: one record each, the only place their facts live.

Facts come from the competitions' data pages (see docs/competitions.md). Stages read a record and never branch on a
competition's name, so adding a competition means adding a record here and a section to params.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import ConfigError


LAYOUTS = ("images", "pixels")
SUBMISSIONS = ("probs", "binary", "label")
METRICS = ("logloss", "accuracy", "roc_auc", "f1_micro", "f1_macro")


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
            raise ConfigError(f"competition record {self.name!r} (pipeline/competitions.py): " + "; ".join(problems))


STATEFARM_CLASSES = tuple(f"c{i}" for i in range(10))

COMPETITIONS: dict[str, Competition] = {
    c.name: c
    for c in (
        Competition(
            name="dogscats",
            slug="dogs-vs-cats-redux-kernels-edition",
            title="Dogs vs. Cats Redux: Kernels Edition",
            classes=("cat", "dog"),
            class_descriptions=("cat", "dog"),
            train_pattern=r"train/(?P<id>(?P<label>cat|dog)\.\d+\.jpg)",
            test_pattern=r"test/(?P<id>\d+)\.jpg",
            id_column="id",
            submission_columns=("label",),
            hflip_keeps_label=True,
            test_images=12_500,
            submission="binary",
        ),
        Competition(
            name="statefarm",
            slug="state-farm-distracted-driver-detection",
            title="State Farm Distracted Driver Detection",
            classes=STATEFARM_CLASSES,
            class_descriptions=(
                "safe driving",
                "texting, right",
                "talking on the phone, right",
                "texting, left",
                "talking on the phone, left",
                "operating the radio",
                "drinking",
                "reaching behind",
                "hair and makeup",
                "talking to passenger",
            ),
            train_pattern=r"train/(?P<label>c\d)/(?P<id>[^/]+\.jpg)",
            test_pattern=r"test/(?P<id>[^/]+\.jpg)",
            id_column="img",
            submission_columns=STATEFARM_CLASSES,
            labels_file="driver_imgs_list.csv",
            labels_id="img",
            labels_label="classname",
            group_column="subject",
            hflip_keeps_label=False,
            group_noun="driver",
            test_images=79_726,
        ),
        Competition(
            name="digits",
            slug="digit-recognizer",
            title="Digit Recognizer",
            classes=tuple("0123456789"),
            class_descriptions=tuple("0123456789"),
            train_pattern="train.csv",
            test_pattern="test.csv",
            id_column="ImageId",
            submission_columns=("Label",),
            hflip_keeps_label=False,  # a mirrored 2 is no digit, and 3s and Es would trade places
            test_images=28_000,
            submission="label",
            metric="accuracy",
            channels=1,
            pixels=(28, 28),
        ),
    )
}


def register(comp: Competition) -> Competition:
    """Add a competition record (checked) to the registry, so params.yaml and every stage know it."""
    comp.check()
    COMPETITIONS[comp.name] = comp
    return comp


for _comp in COMPETITIONS.values():
    _comp.check()


def get_competition(name: str) -> Competition:
    """The record for `name`; a clear error listing the known names otherwise."""
    try:
        return COMPETITIONS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in COMPETITIONS)
        raise ConfigError(f"Unknown competition {name!r}; known competitions are {known}.") from None
