"""Stage `prepare@<comp>`: `data/<comp>/raw/` -> `data/<comp>/cache/`, every JPEG decoded exactly once.

Outputs: `train.npy` and `test.npy`, uint8 arrays of shape (N, height, width, 3) in the row order of
`train.csv` / `test.csv` (copied beside them), and `meta.json`. Later stages read these memory-mapped and never
touch a JPEG again. Images are resized to `prepare.image_size` without cropping (the whole frame matters).
"""

from __future__ import annotations

import io
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
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


def _read(zips: dict[str, zipfile.ZipFile], raw: Path, container: str, member: str) -> bytes:
    try:
        if container not in zips:
            zips[container] = zipfile.ZipFile(raw / container)
        return zips[container].read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a damaged member behind an intact directory
        raise ImageError(
            f"{container}:{member} cannot be read from the archive ({type(e).__name__}: {e}); the archive is "
            "damaged. Download it again (delete data/<comp>/kaggle/ first if it came from Kaggle)."
        ) from None


def decode_index(index: pd.DataFrame, raw: Path, out: np.ndarray, size, workers: int, desc: str) -> None:
    """Decode the images of `index` (container, member) into `out`, row for row."""
    zips: dict[str, zipfile.ZipFile] = {}
    rows = list(zip(index["container"], index["member"]))
    try:
        with ThreadPoolExecutor(workers) as pool, tqdm(total=len(rows), desc=desc, unit="img") as bar:
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start : start + CHUNK]
                blobs = [(_read(zips, raw, c, m), f"{c}:{m}") for c, m in chunk]
                arrays = pool.map(lambda b: decode(b[0], size, b[1]), blobs)
                for i, arr in enumerate(arrays):
                    out[start + i] = arr
                bar.update(len(chunk))
    finally:
        for zf in zips.values():
            zf.close()


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    prep = params.comp(comp_name).prepare
    paths = Paths(comp_name, root)
    h, w = prep.image_size
    with atomic_dir(paths.cache) as out:
        for split in ("train", "test"):
            index = pd.read_csv(paths.raw / f"{split}.csv", dtype={"id": str, "group": str})
            arr = np.lib.format.open_memmap(out / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(len(index), h, w, 3))
            decode_index(index, paths.raw, arr, (h, w), prep.num_workers, f"{comp_name} {split}")
            arr.flush()
            del arr
            write_csv(out / f"{split}.csv", index.drop(columns=["container", "member"]))
        write_json(out / "meta.json", {"prepare": as_dict(prep)})
    return paths.cache


def summary(out: Path) -> str:
    shapes = {split: np.load(out / f"{split}.npy", mmap_mode="r").shape for split in ("train", "test")}
    h, w = shapes["train"][1:3]
    return f"{shapes['train'][0]} train and {shapes['test'][0]} test images decoded once to {h}x{w}"


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=summary, wrote=lambda comp, model, fold: [Paths(comp).cache])


if __name__ == "__main__":
    main()
