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
from pipeline.io import atomic_dir, write_csv, write_json
from pipeline.paths import Paths
from pipeline.stage import stage_main

CHUNK = 256


def decode(data: bytes, size: tuple[int, int], where: str) -> np.ndarray:
    """JPEG bytes -> uint8 (height, width, 3), decoding at reduced scale where the JPEG allows it."""
    height, width = size
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (width, height))  # DCT-domain downscale: ~2x faster decode for big frames
        img = img.convert("RGB").resize((width, height), Image.BILINEAR)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(
            f"{where} is not a readable JPEG ({e}). The archive is damaged; download it again "
            "(or delete that image and its row from the CSVs if you built the archive yourself)."
        ) from None
    return np.asarray(img, dtype=np.uint8)


_ZIPS: dict[str, zipfile.ZipFile] = {}
"""Archives this process has open, by path: each decoding process opens its own once and keeps it."""


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


def create_rows(path: Path, shape: tuple[int, ...]) -> int:
    """A zero-filled uint8 `.npy` file of `shape` (sparse on disk until written); returns where its data starts."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    offset = arr.offset
    del arr
    return offset


def write_rows(path: Path, offset: int, start: int, block: np.ndarray) -> None:
    """Write `block` as rows `start`... of the `.npy` file at `path` (data at `offset`). Plain writes, not a
    memory map: a map's written pages count towards the process's memory until the kernel writes them back."""
    data = memoryview(np.ascontiguousarray(block)).cast("B")
    at = offset + start * (block.nbytes // max(len(block), 1))
    fd = os.open(path, os.O_WRONLY)
    try:
        while data:
            written = os.pwrite(fd, data, at)
            data, at = data[written:], at + written
    finally:
        os.close(fd)


def decode_rows(raw: Path, path: Path, offset: int, start: int, members: list[tuple[str, str]],
                size: tuple[int, int], skip: bool) -> list[tuple[int, str, str]]:
    """Decode `members` (container, member) into rows `start`... of the `.npy` at `path`. One decoding process's
    work: it reads the archive itself, so no image's bytes pass between processes. Returns the unreadable ones as
    (row, file, error) when `skip` (their rows stay black); otherwise the first one raises."""
    block = np.zeros((len(members), *size, 3), np.uint8)
    failed = []
    for i, (container, member) in enumerate(members):
        where = f"{container}:{member}"
        try:
            block[i] = decode(_read(raw, container, member), size, where)
        except ImageError as e:
            if not skip:
                raise
            failed.append((start + i, where, str(e)))
    write_rows(path, offset, start, block)
    return failed


def decode_index(index: pd.DataFrame, raw: Path, path: Path, size, workers: int, skip: bool,
                 desc: str) -> list[tuple[int, str, str]]:
    """Decode the images of `index` (container, member) into a new uint8 `.npy` at `path`, row for row, with
    `workers` processes (0: one per core); returns the unreadable ones (see `decode_rows`)."""
    offset = create_rows(path, (len(index), *size, 3))
    rows = list(zip(index["container"], index["member"]))
    workers = workers or len(os.sched_getaffinity(0))
    chunk = max(16, min(CHUNK, -(-len(rows) // (4 * workers))))  # several chunks per process, even for few images
    chunks = [(start, rows[start : start + chunk]) for start in range(0, len(rows), chunk)]
    failed: list[tuple[int, str, str]] = []
    with tqdm(total=len(rows), desc=desc, unit="img", disable=None) as bar:
        if workers == 1:  # no processes to start: what tests and tiny archives use
            try:
                for start, members in chunks:
                    failed += decode_rows(raw, path, offset, start, members, size, skip)
                    bar.update(len(members))
            finally:
                _close_zips()
            return failed
        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            futures = {pool.submit(decode_rows, raw, path, offset, start, members, size, skip): len(members)
                       for start, members in chunks}
            try:
                for done in as_completed(futures):
                    failed += done.result()
                    bar.update(futures[done])
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return sorted(failed)


def drop_rows(path: Path, drop: list[int]) -> None:
    """Rewrite the `.npy` at `path` without rows `drop`, a chunk at a time."""
    src = np.load(path, mmap_mode="r")
    keep = np.setdiff1d(np.arange(len(src)), drop)
    kept = path.with_name("kept-" + path.name)
    offset = create_rows(kept, (len(keep), *src.shape[1:]))
    for start in range(0, len(keep), CHUNK):
        write_rows(kept, offset, start, src[keep[start : start + CHUNK]])
    del src
    os.replace(kept, path)


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    prep = params.comp(comp_name).prepare
    paths = Paths(comp_name, root)
    with atomic_dir(paths.cache) as out:
        skipped = []
        for split in ("train", "test"):
            index = pd.read_csv(paths.raw / f"{split}.csv", dtype={"id": str, "group": str})
            failed = decode_index(index, paths.raw, out / f"{split}.npy", tuple(prep.image_size), prep.num_workers,
                                  prep.skip_unreadable, f"{comp_name} {split}")
            rows = [row for row, _, _ in failed]
            skipped += [{"split": split, "id": index["id"][row], "file": where, "error": error,
                         "kept": "black image" if split == "test" else "dropped"} for row, where, error in failed]
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
