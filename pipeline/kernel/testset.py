"""The test images of a competition's folder as Kaggle mounts it (`/kaggle/input/<slug>/`), whatever their count:
loose files or members of a zip, matched by the record's `test_pattern` and put in the order of the folder's
`sample_submission.csv` (at scoring Kaggle swaps both for the hidden ones)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.core.competitions import Competition
from pipeline.core.errors import ArchiveError
from pipeline.data.archive import IMAGE_SUFFIXES


@dataclass(frozen=True)
class TestImage:
    id: str
    path: Path
    """The image file, or the zip holding it."""
    member: str | None = None
    """The zip member, when the image is inside `path`."""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def read(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(self.member)


def _match(comp: Competition, name: str):
    """The record's test_pattern against `name` or its tail (Kaggle may mount test.zip as test/test/...)."""
    parts = name.split("/")
    for start in range(len(parts)):
        if m := comp.match_test("/".join(parts[start:])):
            return m
    return None


def find_test_images(comp: Competition, root: Path) -> tuple[pd.DataFrame, list[TestImage]]:
    """sample_submission.csv and its test images, in its order. One-line errors for a missing sample or image."""
    root = Path(root)
    samples = sorted(root.rglob("sample_submission.csv"), key=lambda p: len(p.parts))
    if not samples:
        raise ArchiveError(f"{root} holds no sample_submission.csv: attach the competition {comp.slug} to the notebook.")
    sample = pd.read_csv(samples[0], dtype={comp.id_column: str}, keep_default_na=False)
    if comp.id_column not in sample:
        raise ArchiveError(f"{samples[0]} has no {comp.id_column!r} column (found {', '.join(sample.columns)}); "
                           f"is it {comp.title}'s?")
    found: dict[str, TestImage] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() in IMAGE_SUFFIXES and (m := _match(comp, relative)):
            found.setdefault(m["id"], TestImage(m["id"], path))
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if (m := _match(comp, member)) and member.lower().endswith(IMAGE_SUFFIXES):
                        found.setdefault(m["id"], TestImage(m["id"], path, member))
    ids = sample[comp.id_column].tolist()
    missing = [i for i in ids if i not in found]
    if missing:
        raise ArchiveError(f"{len(missing)} of the {len(ids)} ids in {samples[0]} have no test image matching "
                           f"{comp.test_pattern!r} below {root} (e.g. {', '.join(missing[:3])}); attach the "
                           f"competition's data unchanged.")
    return sample, [found[i] for i in ids]
