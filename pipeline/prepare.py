"""Stage `prepare@<comp>`: `data/<comp>/raw/` -> `data/<comp>/cache/`, every JPEG decoded exactly once.

Outputs: `train.npy` and `test.npy`, uint8 arrays of shape (N, height, width, 3) in the row order of
`train.csv` / `test.csv` (copied beside them), `skipped.csv` and `meta.json`. Later stages read these
memory-mapped and never touch a JPEG again. Images are resized to `prepare.image_size` without cropping (the whole
frame matters), decoding at reduced size where the JPEG allows it, by `prepare.num_workers` processes that each
read their own images from the archive. An unreadable image stops the stage with its name, or with
`prepare.skip_unreadable` is listed in `skipped.csv`.
"""

from __future__ import annotations

import io
import zipfile
import zlib
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.config import Params, as_dict
from pipeline.errors import ImageError
from pipeline.io import NpyRows, atomic_dir, write_csv, write_json
from pipeline.paths import Paths
from pipeline.stage import stage_main

CHUNK = 256


def decode(data: bytes, size: tuple[int, int], where: str, out: np.ndarray | None = None) -> np.ndarray:
    """Image bytes -> uint8 (height, width, 3) RGB in `out` (new when None), decoded at 1/2, 1/4 or 1/8 scale in
    the DCT domain (libjpeg's scaled decoding, through OpenCV) whenever the image is at least that much larger
    than `size`, then resized with area averaging. EXIF orientation is ignored, as Kaggle's labels were made on
    the stored pixels."""
    import cv2  # here: a worker process imports it once; the stage's other imports need it not

    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only: the size, and that it is an image at all
            full_w, full_h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(where, e) from None
    factor = max((f for f in (8, 4, 2) if full_w // f >= width and full_h // f >= height), default=1)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:  # OpenCV's answer to a truncated or corrupt image
        raise _unreadable(where, "the image data is cut short or corrupt")
    if arr.shape[:2] != (height, width):
        arr = cv2.resize(arr, (width, height), interpolation=cv2.INTER_AREA)
    out = np.empty((height, width, 3), np.uint8) if out is None else out
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=out)


def _unreadable(where: str, why) -> ImageError:
    return ImageError(f"{where} is not a readable image ({why}). The archive is damaged; download it again "
                      "(or delete that image and its row from the CSVs if you built the archive yourself).")


_ZIPS: dict[str, zipfile.ZipFile] = {}
"""Archives this process has open, by path: each decoding process opens its own once and keeps it."""
_BLOCK: dict[tuple, np.ndarray] = {}
"""This process's decoding buffer, by shape: reused from chunk to chunk."""


def _read(raw: Path, container: str, member: str) -> bytes:
    try:
        key = str(raw / container)
        if key not in _ZIPS:
            _ZIPS[key] = zipfile.ZipFile(key)
        return _ZIPS[key].read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged member behind an intact directory
        raise ImageError(
            f"{container}:{member} cannot be read from the archive ({type(e).__name__}: {e}); the archive is "
            "damaged. Download it again (delete data/<comp>/kaggle/ first if it came from Kaggle)."
        ) from None


def _close_zips() -> None:
    while _ZIPS:
        _ZIPS.popitem()[1].close()


def decode_rows(raw: Path, rows: NpyRows, start: int, members: list[tuple[str, str]], skip: bool
                ) -> list[tuple[int, str, str]]:
    """Decode `members` (container, member) into rows `start`... of `rows`. One decoding process's work: it
    reads the archive itself, so no image's bytes pass between processes. Returns the unreadable ones as (row,
    file, error) when `skip` (their rows stay black); otherwise the first one raises."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already
    shape = (CHUNK, *rows.shape[1:])
    block = _BLOCK.setdefault(shape, np.empty(shape, np.uint8))[: len(members)]
    failed = []
    for i, (container, member) in enumerate(members):
        where = f"{container}:{member}"
        try:
            decode(_read(raw, container, member), rows.shape[1:3], where, out=block[i])
        except ImageError as e:
            if not skip:
                raise
            block[i] = 0
            failed.append((start + i, where, str(e)))
    rows.write(start, block)
    return failed


def decode_all(jobs: dict[str, tuple[pd.DataFrame, NpyRows]], raw: Path, workers: int, skip: bool,
               desc: str) -> dict[str, list[tuple[int, str, str]]]:
    """Decode the images of each job's index (container, member) into its rows file, row for row, with `workers`
    processes (0: one per core) sharing one queue of chunks; returns each job's unreadable images (see
    `decode_rows`)."""
    workers = workers or len(os.sched_getaffinity(0))
    total = sum(len(index) for index, _ in jobs.values())
    chunk = max(16, min(CHUNK, -(-total // (4 * workers))))  # several chunks per process, even for few images
    chunks = []
    for name, (index, rows) in jobs.items():
        members = list(zip(index["container"], index["member"]))
        chunks += [(name, rows, start, members[start : start + chunk]) for start in range(0, len(members), chunk)]
    failed: dict[str, list] = {name: [] for name in jobs}
    with tqdm(total=total, desc=desc, unit="img", disable=None) as bar:
        if workers == 1:  # no processes to start: what tests and tiny archives use
            try:
                for name, rows, start, members in chunks:
                    failed[name] += decode_rows(raw, rows, start, members, skip)
                    bar.update(len(members))
            finally:
                _close_zips()
            return failed
        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            futures = {pool.submit(decode_rows, raw, rows, start, members, skip): (name, len(members))
                       for name, rows, start, members in chunks}
            try:
                for done in as_completed(futures):
                    name, count = futures[done]
                    failed[name] += done.result()
                    bar.update(count)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return {name: sorted(f) for name, f in failed.items()}


def drop_rows(path: Path, drop: list[int]) -> None:
    """Rewrite the `.npy` at `path` without rows `drop`, a chunk at a time."""
    src = np.load(path, mmap_mode="r")
    keep = np.setdiff1d(np.arange(len(src)), drop)
    kept = NpyRows(path.with_name("kept-" + path.name), src.dtype, (len(keep), *src.shape[1:]))
    for start in range(0, len(keep), CHUNK):
        kept.write(start, src[keep[start : start + CHUNK]])
    del src
    os.replace(kept.path, path)


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    prep = params.comp(comp_name).prepare
    paths = Paths(comp_name, root)
    with atomic_dir(paths.cache) as out:
        indexes = {split: pd.read_csv(paths.raw / f"{split}.csv", dtype={"id": str, "group": str})
                   for split in ("train", "test")}
        jobs = {split: (index, NpyRows(out / f"{split}.npy", np.uint8, (len(index), *prep.image_size, 3)))
                for split, index in indexes.items()}
        failed = decode_all(jobs, paths.raw, prep.num_workers, prep.skip_unreadable, f"{comp_name} decode")
        skipped = []
        for split, index in indexes.items():
            rows = [row for row, _, _ in failed[split]]
            skipped += [{"split": split, "id": index["id"][row], "file": where, "error": error,
                         "kept": "black image" if split == "test" else "dropped"}
                        for row, where, error in failed[split]]
            if split == "train" and rows:  # a test image must stay: the submission needs a row for every one
                drop_rows(out / f"{split}.npy", rows)
                index = index.drop(index.index[rows]).reset_index(drop=True)
            write_csv(out / f"{split}.csv", index.drop(columns=["container", "member"]))
        write_csv(out / "skipped.csv", pd.DataFrame(skipped, columns=["split", "id", "file", "error", "kept"]))
        write_json(out / "meta.json", {"prepare": as_dict(prep), "skipped": len(skipped)})
    return paths.cache


def summary(out: Path) -> str:
    shapes = {split: np.load(out / f"{split}.npy", mmap_mode="r").shape for split in ("train", "test")}
    h, w = shapes["train"][1:3]
    skipped = len(pd.read_csv(out / "skipped.csv"))
    note = f"; {skipped} unreadable image(s) skipped, listed in {out / 'skipped.csv'}" if skipped else ""
    return f"{shapes['train'][0]} train and {shapes['test'][0]} test images decoded once to {h}x{w}{note}"


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=summary, wrote=lambda comp, model, fold: [Paths(comp).cache])


if __name__ == "__main__":
    main()
