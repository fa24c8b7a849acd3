"""Stage `prepare@<comp>`: `data/<comp>/raw/` -> `data/<comp>/cache/`, every image decoded exactly once.

Outputs: `train.npy` and `test.npy`, uint8 arrays of shape (N, height, width, channels: 3, or 1 for greyscale
competitions) in the row order of `train.csv` / `test.csv` (copied beside them), `skipped.csv` and `meta.json`.
Later stages read these and never touch a JPEG, PNG or pixel CSV again. Images are resized to `prepare.image_size` without cropping (the whole
frame matters), decoding at reduced size where the JPEG allows it, by `speed.prepare_workers` processes that each
read their own images from the archive. An unreadable image (a damaged one, a decompression bomb, or a member that
would unpack to more than 256 MiB) stops the stage with its name, or with `prepare.skip_unreadable` is listed in
`skipped.csv`.
On a real archive (`data.source` not `demo`) it first prints a rough time estimate of the run and the share of
the images' pixels the cache keeps.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params, as_dict
from pipeline.core.errors import ArchiveError, ImageError
from pipeline.core.io import NpyRows, atomic_dir, write_csv, write_json
from pipeline.core.machine import usable_cpus
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.data.images import MAX_IMAGE_BYTES, decode, pixel_row
from pipeline.training import estimate

CHUNK = 256


_ZIPS: dict[str, zipfile.ZipFile] = {}
"""Archives this process has open, by path: each decoding process opens its own once and keeps it."""
_PIXELS: dict[str, np.ndarray] = {}
PIXEL_ROWS = 4096
"""Rows of a pixel CSV parsed at a time (as int64, 8x the uint8 kept: the whole file at once would be)."""
"""Pixel CSVs this process has read, by path: (rows, height * width) uint8."""
_BLOCK: dict[str, np.ndarray] = {}
"""This process's decoding buffer: reused from chunk to chunk."""
CHUNK_BYTES = 32 << 20
"""At most this much decoded image per chunk: each process's buffer stays small whatever the image size."""


def _read(raw: Path, container: str, member: str) -> bytes:
    key = str(raw / container)
    if key not in _ZIPS:
        try:
            _ZIPS[key] = zipfile.ZipFile(key)
        except (zipfile.BadZipFile, OSError) as e:  # the whole archive, never one image to skip
            raise ArchiveError(f"{raw / container} cannot be opened ({type(e).__name__}: {e}); re-run "
                               "`dvc repro download@<comp>` (download the archive again if it is damaged).") from None
    info = _ZIPS[key].getinfo(member)
    if info.file_size > MAX_IMAGE_BYTES:  # zipfile never unpacks more than the size its directory gives
        raise ImageError(f"{container}:{member} would unpack to {info.file_size / 2**20:,.0f} MiB, more than the "
                         f"{MAX_IMAGE_BYTES >> 20} MiB one image may: the archive is damaged or a zip bomb. Download "
                         "it again (or delete that image and its row from the CSVs if you built the archive yourself).")
    try:
        return _ZIPS[key].read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged member behind an intact directory
        raise ImageError(
            f"{container}:{member} cannot be read from the archive ({type(e).__name__}: {e}); the archive is "
            "damaged. Download it again (delete data/<comp>/kaggle/ first if it came from Kaggle)."
        ) from None


def _pixels(raw: Path, container: str) -> np.ndarray:
    key = str(raw / container)
    if key not in _PIXELS:
        columns = [c for c in pd.read_csv(key, nrows=0).columns if c.startswith("pixel")]
        parts, low, high = [], 0, 0
        try:
            for chunk in pd.read_csv(key, usecols=columns, dtype=np.int64, chunksize=PIXEL_ROWS):
                values = chunk.to_numpy()
                low, high = min(low, values.min(initial=0)), max(high, values.max(initial=0))
                parts.append(values.clip(0, 255).astype(np.uint8))
        except (TypeError, ValueError) as e:
            raise ImageError(f"{container} holds pixel values that are not integers ({e}); the archive is damaged: "
                             "download it again.") from None
        if low < 0 or high > 255:
            raise ImageError(f"{container} holds pixel values outside 0-255 (from {low} to {high});"
                             " expected 8-bit greyscale. Download the archive again.")
        _PIXELS[key] = np.concatenate(parts) if parts else np.zeros((0, len(columns)), np.uint8)
    return _PIXELS[key]


def _close_zips() -> None:
    _PIXELS.clear()
    while _ZIPS:
        _ZIPS.popitem()[1].close()


def decode_rows(raw: Path, rows: NpyRows, start: int, members: list[tuple[str, str]], skip: bool,
                pixels: tuple[int, int] | None = None) -> list[tuple[int, str, str]]:
    """Decode `members` (container, member) into rows `start`... of `rows`. One decoding process's work: it
    reads the archive itself, so no image's bytes pass between processes. Returns the unreadable ones as (row,
    file, error) when `skip` (their rows stay black); otherwise the first one raises. With `pixels` (height,
    width), containers are pixel CSVs and members their row numbers."""
    import cv2

    cv2.setNumThreads(0)  # one process per core already: no OpenCV threads
    shape = (len(members), *rows.shape[1:])
    if _BLOCK.get("block") is None or _BLOCK["block"].shape[1:] != shape[1:] or len(_BLOCK["block"]) < shape[0]:
        _BLOCK["block"] = np.empty(shape, np.uint8)
    block = _BLOCK["block"][: len(members)]
    failed = []
    for i, (container, member) in enumerate(members):
        where = f"{container}:{member}"
        try:
            if pixels:
                pixel_row(_pixels(raw, container)[int(member)], pixels, rows.shape[1:3], block[i])
            else:
                decode(_read(raw, container, member), rows.shape[1:3], where, out=block[i], channels=rows.shape[3])
        except ImageError as e:
            if not skip:
                raise
            block[i] = 0
            failed.append((start + i, where, str(e)))
    rows.write(start, block)
    return failed


def decode_all(jobs: dict[str, tuple[pd.DataFrame, NpyRows]], raw: Path, workers: int, skip: bool,
               desc: str, pixels: tuple[int, int] | None = None) -> dict[str, list[tuple[int, str, str]]]:
    """Decode the images of each job's index (container, member) into its rows file, row for row, with `workers`
    processes (0: one per core) sharing one queue of chunks; returns each job's unreadable images (see
    `decode_rows`)."""
    workers = workers or usable_cpus()
    total = sum(len(index) for index, _ in jobs.values())
    row_bytes = max(rows.row_bytes for _, rows in jobs.values())
    chunk = max(1, min(CHUNK, CHUNK_BYTES // row_bytes, max(16, -(-total // (4 * workers)))))  # several per process
    chunks = []
    for name, (index, rows) in jobs.items():
        members = list(zip(index["container"], index["member"]))
        chunks += [(name, rows, start, members[start : start + chunk]) for start in range(0, len(members), chunk)]
    failed: dict[str, list] = {name: [] for name in jobs}
    with tqdm(total=total, desc=desc, unit="img", disable=None) as bar:
        if workers == 1:  # no processes to start: what tests and tiny archives use
            try:
                for name, rows, start, members in chunks:
                    failed[name] += decode_rows(raw, rows, start, members, skip, pixels)
                    bar.update(len(members))
            finally:
                _close_zips()
                _BLOCK.clear()
            return failed
        # forkserver: fresh processes, not forks of this one, whose OpenCV or torch threads (in a test, or a
        # notebook) may hold locks at the fork that a forked child then waits on forever
        context = multiprocessing.get_context("forkserver")
        # this module's imports loaded once, in the server; as the stage's command (__main__) every worker runs
        # the module itself as __mp_main__, which a preloaded copy makes runpy warn about
        context.set_forkserver_preload(["cv2", "pandas", "pipeline.core.stage"] if __name__ == "__main__"
                                       else ["pipeline.stages.prepare"])
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
            futures = {pool.submit(decode_rows, raw, rows, start, members, skip, pixels): (name, len(members))
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


SKIP_AT_MOST = 0.05
"""`prepare.skip_unreadable` skips a few damaged images, not a damaged archive."""


def check_skipped(failed: dict[str, list], indexes: dict[str, pd.DataFrame]) -> None:
    """Stop when skipping would hide a damaged archive: more than 5% of the images unreadable, or a class with
    no readable train image left."""
    total = sum(len(index) for index in indexes.values())
    count = sum(len(f) for f in failed.values())
    examples = ", ".join(where for f in failed.values() for _, where, _ in f[:3])
    if count > SKIP_AT_MOST * total:
        raise ImageError(f"{count} of {total} images are unreadable (e.g. {examples}): more than "
                         f"{SKIP_AT_MOST:.0%}, which prepare.skip_unreadable does not skip. The archive is damaged; "
                         "download it again.")
    train = indexes["train"]
    lost = train["label"].iloc[[row for row, _, _ in failed["train"]]].value_counts()
    emptied = [label for label, n in lost.items() if n == (train["label"] == label).sum()]
    if emptied:
        raise ImageError(f"every train image of class(es) {emptied} is unreadable (e.g. {examples}); the archive "
                         "is damaged: download it again.")


def drop_rows(path: Path, drop: list[int]) -> None:
    """Rewrite the `.npy` at `path` without rows `drop`, a chunk at a time."""
    src = np.load(path, mmap_mode="r")
    keep = np.setdiff1d(np.arange(len(src)), drop)
    kept = NpyRows(path.with_name("kept-" + path.name), src.dtype, (len(keep), *src.shape[1:]))
    chunk = max(1, min(CHUNK, CHUNK_BYTES // kept.row_bytes))
    for start in range(0, len(keep), chunk):
        kept.write(start, src[keep[start : start + chunk]])
    del src
    os.replace(kept.path, path)


SAMPLED = 16
"""Train images whose size the pixel-share line reads (their headers only)."""


def source_size(raw: Path, index: pd.DataFrame, pixels: tuple[int, int] | None) -> tuple[int, int] | None:
    """(width, height) of the archive's images: a pixel CSV's, or the median of the first few train images'
    headers (None when none can be read: decoding then names the problem)."""
    if pixels:
        return pixels[1], pixels[0]
    sizes = []
    try:
        for container, member in zip(index["container"][:SAMPLED], index["member"][:SAMPLED]):
            try:
                sizes.append(Image.open(io.BytesIO(_read(raw, container, member))).size)
            except (ImageError, OSError, Image.DecompressionBombError):
                continue
    finally:
        _close_zips()
    if not sizes:
        return None
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    return widths[len(sizes) // 2], heights[len(sizes) // 2]


def pixel_share(comp_name: str, size: tuple[int, int] | None, image_size: tuple[int, int]) -> str | None:
    """One line: the share of the archive's pixels (`size`, width x height) that the cache (`image_size`, height
    and width as params.yaml spells it) keeps."""
    if size is None:
        return None
    share = image_size[0] * image_size[1] / (size[0] * size[1])
    kept = f"keeping {share:.0%} of" if share <= 1 else f"enlarging {share:.1f}x"
    return (f"{comp_name}: {kept} the {size[0]}x{size[1]} images' pixels (prepare.image_size "
            f"[{image_size[0]}, {image_size[1]}])")


def announce(params: Params, comp_name: str, raw: Path, indexes: dict[str, pd.DataFrame]) -> None:
    """Before decoding a real archive: the run's rough time on this device, and the pixels the cache keeps."""
    comp = get_competition(comp_name)
    for line in estimate.lines(params, comp_name, len(indexes["train"]), len(indexes["test"])):
        print(line, flush=True)
    share = pixel_share(comp_name, source_size(raw, indexes["train"], comp.pixels),
                        params.comp(comp_name).prepare.image_size)
    if share:
        print(share, flush=True)


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    comp = get_competition(comp_name)
    prep = params.comp(comp_name).prepare
    paths = Paths(comp_name, root)
    with atomic_dir(paths.cache) as out:
        indexes = {split: pd.read_csv(paths.raw / f"{split}.csv", dtype={"id": str, "label": str, "group": str},
                                      keep_default_na=False)
                   for split in ("train", "test")}
        if params.comp(comp_name).data.source != "demo":
            announce(params, comp_name, paths.raw, indexes)
        jobs = {split: (index, NpyRows(out / f"{split}.npy", np.uint8, (len(index), *prep.image_size, comp.channels)))
                for split, index in indexes.items()}
        # pixel CSVs are read whole by each process: one process reads one CSV once
        workers = 1 if comp.pixels else params.comp(comp_name).speed.prepare_workers
        failed = decode_all(jobs, paths.raw, workers, prep.skip_unreadable, f"{comp_name} decode", comp.pixels)
        check_skipped(failed, indexes)
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
