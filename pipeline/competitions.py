"""The competitions this pipeline knows: one record each, the only place their facts live.

Facts come from the competitions' data pages (see README). Stages read a record and never branch on a
competition's name, so adding a competition means adding a record here and a section to params.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Competition:
    """Everything the pipeline needs to know about one Kaggle competition."""

    name: str
    """Short name used in params.yaml, paths and stage names."""
    slug: str
    """Kaggle's competition slug (`kaggle competitions download -c <slug>`)."""
    title: str
    classes: tuple[str, ...]
    """Class labels in the order of the model's outputs."""
    class_descriptions: tuple[str, ...]
    train_pattern: str
    """Regex over a train image's path (below the optional `imgs/` folder); groups `label` and `id`."""
    test_pattern: str
    """Regex over a test image's path; group `id` is the id written to the submission."""
    id_column: str
    """Id column of sample_submission.csv and of our submission."""
    submission_columns: tuple[str, ...]
    """Probability columns of the submission; one column means P(last class) of a binary problem."""
    labels_file: str | None
    """Optional CSV in the archive that lists train images with their group (driver)."""
    group_column: str | None
    """Column of `labels_file` that folds must be grouped by (no group on both sides of a split)."""
    hflip_keeps_label: bool
    """Whether a horizontal flip is label-preserving (allowed in augmentation and TTA)."""
    group_noun: str = "group"
    """What one group is, in words (State Farm: a driver)."""
    test_images: int | None = None
    """Rows of the real competition's sample_submission.csv: a submission with another count was not made from
    the real archive (`pipeline submit` refuses it)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def binary(self) -> bool:
        return len(self.submission_columns) == 1

    def match_train(self, path: str) -> re.Match | None:
        return re.fullmatch(self.train_pattern, path)

    def match_test(self, path: str) -> re.Match | None:
        return re.fullmatch(self.test_pattern, path)


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
            labels_file=None,
            group_column=None,
            hflip_keeps_label=True,
            test_images=12_500,
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
            group_column="subject",
            hflip_keeps_label=False,
            group_noun="driver",
            test_images=79_726,
        ),
    )
}


def get_competition(name: str) -> Competition:
    """The record for `name`; a clear error listing the known names otherwise."""
    try:
        return COMPETITIONS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in COMPETITIONS)
        raise ConfigError(f"Unknown competition {name!r}; known competitions are {known}.") from None
