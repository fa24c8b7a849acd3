"""The decode-once cache: shapes, row order, and a corrupt JPEG named in the error."""

import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import read_zip, tiny_params, write_zip
from pipeline import download, prepare
from pipeline.demo import write_demo_archive
from pipeline.competitions import get_competition
from pipeline.errors import ImageError


def test_cache_holds_every_image_resized_in_index_order(tmp_path):
    params = tiny_params()
    raw = download.run(params, "statefarm", tmp_path)
    cache = prepare.run(params, "statefarm", tmp_path)
    images = np.load(cache / "train.npy", mmap_mode="r")
    index = pd.read_csv(cache / "train.csv", dtype=str)
    raw_index = pd.read_csv(raw / "train.csv", dtype=str)
    assert images.dtype == np.uint8 and images.shape == (len(raw_index), 24, 32, 3)
    assert list(index["id"]) == list(raw_index["id"])
    row = 3
    with zipfile.ZipFile(raw / raw_index["container"][row]) as zf, zf.open(raw_index["member"][row]) as f:
        expected = np.asarray(Image.open(f).convert("RGB").resize((32, 24), Image.BILINEAR), dtype=np.int16)
    assert np.abs(images[row].astype(np.int16) - expected).mean() < 12  # draft decoding differs a little
    test = np.load(cache / "test.npy")
    assert len(test) == len(pd.read_csv(raw / "test.csv"))


def test_corrupt_jpeg_is_named_and_nothing_is_written(tmp_path):
    comp = get_competition("statefarm")
    good = write_demo_archive(comp, tiny_params().comp("statefarm").data.demo, 0, tmp_path / "good.zip")
    files = read_zip(good)
    victim = next(k for k in files if k.startswith("imgs/train/c2/"))
    files[victim] = files[victim][:200]  # truncated JPEG
    params = tiny_params(**{"statefarm.data.source": str(write_zip(tmp_path / "bad.zip", files))})
    root = tmp_path / "root"
    download.run(params, "statefarm", root)
    with pytest.raises(ImageError) as e:
        prepare.run(params, "statefarm", root)
    assert victim in str(e.value) and "download it again" in str(e.value)
    assert not (root / "data" / "statefarm" / "cache").exists()
