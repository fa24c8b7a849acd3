"""An archive's layout, as the competition's record describes it, turned into the image index: which member is
which train image (with its label and group) and which test image, in the order of sample_submission.csv."""

from __future__ import annotations

import re

import pandas as pd

from pipeline.core.competitions import Competition
from pipeline.core.errors import ArchiveError
from pipeline.data.archive import Listing

EXAMPLES = 5


def _examples(items) -> str:
    items = sorted(items)
    more = f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
    return ", ".join(items[:EXAMPLES]) + more


def _layout_hint(comp: Competition) -> str:
    if comp.pixels:
        h, w = comp.pixels
        test_id = f"a {comp.pixels_id!r} column, then " if comp.pixels_id else ""
        return (f"Expected the layout of Kaggle's {comp.slug}.zip: {comp.train_pattern} (a {comp.labels_label!r} "
                f"column, then {h * w} pixel columns) and {comp.test_pattern} ({test_id}{h * w} pixel columns), plus "
                "sample_submission.csv.")
    return (
        f"Expected the layout of Kaggle's {comp.slug}.zip: train images matching '{comp.train_pattern}' and test "
        f"images matching '{comp.test_pattern}' (optionally below 'imgs/' or inside nested zips), plus "
        + ", ".join(f for f in ("sample_submission.csv", comp.labels_file) if f)
        + "."
    )


def build_index(comp: Competition, listing: Listing, shown: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test index frames (id, label, group, container, member / id, container, member) from an
    archive's listing, checked against the competition's CSVs."""
    if comp.pixels:
        train, test = _pixel_index(comp, listing, shown)
    else:
        train, test = _image_index(comp, listing, shown)
    train = _attach_labels(comp, train, listing, shown)
    blank = train["label"].isna() | (train["label"].astype(str).str.strip() == "")
    if blank.any():
        raise ArchiveError(f"{int(blank.sum())} train image(s) in {shown} have no label: "
                           f"{_examples(train.loc[blank, 'id'])}. The archive is damaged; download it again.")
    unknown = sorted(set(train["label"]) - set(comp.classes))
    if unknown:
        raise ArchiveError(f"{shown} labels train images with {len(unknown)} class(es) that {comp.title} does not "
                           f"have: {_examples(map(str, unknown))}; its classes are {', '.join(comp.classes)}. "
                           "Check the competition's record in pipeline/competitions.py.")
    test = _order_like_sample(comp, test, listing, shown)
    return train.sort_values("id", kind="stable").reset_index(drop=True), test


def _image_index(comp: Competition, listing: Listing, shown: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    train_rows, test_rows = [], []
    with_label = "label" in re.compile(comp.train_pattern).groupindex
    for norm, (container, member) in listing.images.items():
        if m := comp.match_train(norm):
            train_rows.append((m["id"], m["label"] if with_label else None, container, member))
        elif m := comp.match_test(norm):
            test_rows.append((m["id"], container, member))
    if not train_rows or not test_rows:
        found = _examples(list(listing.images)) or "no images at all"
        raise ArchiveError(
            f"{shown} is not in the layout of {comp.title}: found "
            f"{len(train_rows)} train and {len(test_rows)} test images (images seen: {found}). {_layout_hint(comp)}"
        )
    train = pd.DataFrame(train_rows, columns=["id", "label", "container", "member"])
    if train["id"].duplicated().any():
        raise ArchiveError(f"{shown} holds several train images with the id(s) "
                           f"{_examples(train.loc[train['id'].duplicated(), 'id'])}; an id must name one image. "
                           f"Check train_pattern in {comp.name}'s record (pipeline/competitions.py).")
    return train, pd.DataFrame(test_rows, columns=["id", "container", "member"])


def _pixel_index(comp: Competition, listing: Listing, shown: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of pixel CSVs as images: the member is the row's number in its CSV (prepare reads the pixels). A test
    image's id is its `pixels_id` column, or its row number from 1 (Digit Recognizer's ImageId)."""
    h, w = comp.pixels
    frames = {}
    for split, name in (("train", comp.train_pattern), ("test", comp.test_pattern)):
        label = [comp.labels_label] if split == "train" else [comp.pixels_id] if comp.pixels_id else []
        columns = label + [f"pixel{k}" for k in range(h * w)]
        head = _read_csv(listing, name, shown, comp, columns, nrows=0)
        if list(head.columns) != columns:
            raise ArchiveError(f"{name} in {shown} has columns {_examples(head.columns)}; expected "
                               f"{', '.join(columns[:3])}, ..., pixel{h * w - 1} ({h}x{w} images). "
                               + _layout_hint(comp))
        labels = pd.read_csv(listing.csvs[name], usecols=label or ["pixel0"], dtype=str, keep_default_na=False)
        container = listing.csvs[name].relative_to(listing.csvs[name].parent.parent).as_posix()
        ids = (labels[comp.pixels_id].to_numpy() if split == "test" and comp.pixels_id
               else [str(k + 1) for k in range(len(labels))])
        frames[split] = pd.DataFrame({"id": ids, "container": container,
                                      "member": [str(k) for k in range(len(labels))]})
        if frames[split]["id"].duplicated().any():
            raise ArchiveError(f"{name} in {shown} gives several rows the id(s) "
                               f"{_examples(frames[split].loc[frames[split]['id'].duplicated(), 'id'])}; an id must "
                               "name one image. Download the archive again.")
        if split == "train":
            frames[split].insert(1, "label", labels[comp.labels_label].to_numpy())
    return frames["train"], frames["test"]


def _read_csv(listing: Listing, name: str, shown: str, comp: Competition, columns: list[str],
              nrows: int | None = None) -> pd.DataFrame:
    if name not in listing.csvs:
        raise ArchiveError(f"{shown} has no {name}. {_layout_hint(comp)}")
    try:
        df = pd.read_csv(listing.csvs[name], dtype=str, nrows=nrows, keep_default_na=False)  # 'NA' is a label too
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ArchiveError(f"{name} in {shown} cannot be read as CSV ({e}); download the archive again.") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ArchiveError(f"{name} in {shown} lacks column(s) {_examples(missing)}; found {_examples(df.columns)}.")
    return df


def _attach_labels(comp: Competition, train: pd.DataFrame, listing: Listing, shown: str) -> pd.DataFrame:
    """Labels and groups from `labels_file` (each listed image checked to exist, and to be listed once, with the
    label its path gives when it gives one); without one, each image is its own group."""
    if comp.labels_file is None:
        train["group"] = train["id"]
        return train
    from_paths = train["label"].notna().all()  # the pattern gave them: the file need only hold groups
    columns = [comp.labels_id] + ([] if from_paths else [comp.labels_label]) + (
        [comp.group_column] if comp.group_column else [])
    listed = _read_csv(listing, comp.labels_file, shown, comp, columns)
    twice = listed[comp.labels_id].duplicated()
    if twice.any():
        raise ArchiveError(f"{comp.labels_file} in {shown} lists {_examples(listed.loc[twice, comp.labels_id])} more "
                           "than once; download the archive again.")
    listed = listed.set_index(comp.labels_id)
    ids = set(train["id"])
    missing = set(listed.index) - ids
    if missing and not set(listed.index) & ids:
        raise ArchiveError(
            f"no id in {comp.labels_file}'s {comp.labels_id!r} column matches a train image's id: listed e.g. "
            f"{_examples(list(listed.index)[:2])}, found e.g. {_examples(sorted(ids)[:2])}. Make train_pattern's "
            f"id group spell ids as {comp.labels_file} does (with or without the file extension), or set labels_id "
            f"in {comp.name}'s record (pipeline/competitions.py).")
    if missing:
        raise ArchiveError(
            f"{comp.labels_file} lists {len(missing)} image(s) missing from {shown}: "
            f"{_examples(missing)}. The archive is incomplete; download it again."
        )
    unlisted = ids - set(listed.index)
    if unlisted:
        raise ArchiveError(
            f"{shown} holds {len(unlisted)} train image(s) that {comp.labels_file} does not list, so their "
            f"label or {comp.group_column or 'group'} is unknown: {_examples(unlisted)}. Download the archive again."
        )
    rows = listed.loc[train["id"]]
    if from_paths and comp.labels_label in rows:
        differ = train["label"].to_numpy() != rows[comp.labels_label].to_numpy()
        if differ.any():
            raise ArchiveError(f"{comp.labels_file} gives {int(differ.sum())} train image(s) another class than "
                               f"their path: {_examples(train.loc[differ, 'id'])}. Download the archive again.")
    if not from_paths:
        train["label"] = rows[comp.labels_label].to_numpy()
    train["group"] = rows[comp.group_column].to_numpy() if comp.group_column else train["id"].to_numpy()
    return train


def _order_like_sample(comp: Competition, test: pd.DataFrame, listing: Listing, shown: str) -> pd.DataFrame:
    sample = _read_csv(listing, "sample_submission.csv", shown, comp, [comp.id_column])
    ids, sample_ids = set(test["id"]), set(sample[comp.id_column])
    if ids and not ids & sample_ids:
        raise ArchiveError(
            f"no test image's id is in sample_submission.csv's {comp.id_column!r} column: found e.g. "
            f"{_examples(sorted(ids)[:2])}, listed e.g. {_examples(sorted(sample_ids)[:2])}. Make test_pattern's id "
            f"group spell ids as sample_submission.csv does (with or without the file extension), in "
            f"{comp.name}'s record (pipeline/competitions.py).")
    if ids - sample_ids:
        raise ArchiveError(
            f"{len(ids - sample_ids)} test image(s) in {shown} have no row in sample_submission.csv: "
            f"{_examples(ids - sample_ids)}. The archive is inconsistent; download it again."
        )
    if sample_ids - ids:
        raise ArchiveError(
            f"sample_submission.csv has {len(sample_ids - ids)} row(s) with no test image in {shown}: "
            f"{_examples(sample_ids - ids)}. The archive is incomplete; download it again."
        )
    return test.set_index("id").loc[sample[comp.id_column]].reset_index()
