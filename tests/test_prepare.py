"""The decode-once cache: shapes, row order, and a corrupt JPEG named in the error."""

import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import read_zip, tiny_params, write_zip
from pipeline.stages import download, folds, prepare
from pipeline.data.cache import load_folds
from pipeline.data.demo import write_demo_archive
from pipeline.core.competitions import get_competition
from pipeline.core.sections import DemoParams
from pipeline.core.errors import ImageError


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
    assert np.abs(images[row].astype(np.int16) - expected).mean() < 12  # reduced-scale decoding differs a little
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


def test_decoding_processes_give_the_same_cache_as_one_process(tmp_path):
    """`speed.prepare_workers` processes each read and decode their own share of the archive, straight into the
    output file: the bytes are those of the single-process path, in index order."""
    caches = {}
    for workers in (1, 3):
        params = tiny_params(**{"statefarm.speed.prepare_workers": workers})
        root = tmp_path / str(workers)
        download.run(params, "statefarm", root)
        caches[workers] = prepare.run(params, "statefarm", root)
    for name in ("train.npy", "test.npy", "train.csv", "test.csv"):
        assert (caches[1] / name).read_bytes() == (caches[3] / name).read_bytes(), name


def test_skip_unreadable_lists_the_bad_images_drops_train_ones_and_keeps_test_rows(tmp_path):
    comp = get_competition("statefarm")
    good = write_demo_archive(comp, tiny_params().comp("statefarm").data.demo, 0, tmp_path / "good.zip")
    files = read_zip(good)
    bad_train = sorted(k for k in files if k.startswith("imgs/train/c2/"))[1]
    bad_test = sorted(k for k in files if k.startswith("imgs/test/"))[2]
    for victim in (bad_train, bad_test):
        files[victim] = files[victim][: len(files[victim]) // 3]  # truncated mid-scan
    params = tiny_params(**{"statefarm.data.source": str(write_zip(tmp_path / "bad.zip", files)),
                            "statefarm.prepare.skip_unreadable": True})
    root = tmp_path / "root"
    raw = download.run(params, "statefarm", root)
    folds.run(params, "statefarm", root)
    cache = prepare.run(params, "statefarm", root)
    skipped = pd.read_csv(cache / "skipped.csv", dtype=str)
    assert sorted(skipped["file"].str.split(":").str[1]) == sorted([bad_train, bad_test])
    assert set(skipped["kept"]) == {"dropped", "black image"}
    raw_train, raw_test = (pd.read_csv(raw / f"{s}.csv", dtype=str) for s in ("train", "test"))
    train_index, test_index = (pd.read_csv(cache / f"{s}.csv", dtype=str) for s in ("train", "test"))
    train_id = bad_train.rsplit("/", 1)[1]
    assert list(train_index["id"]) == [i for i in raw_train["id"] if i != train_id]
    assert list(test_index["id"]) == list(raw_test["id"]), "every test image keeps its row for the submission"
    train_images, test_images = np.load(cache / "train.npy"), np.load(cache / "test.npy")
    assert len(train_images) == len(train_index) and (train_images.reshape(len(train_images), -1).max(1) > 0).all()
    black = test_index.index[test_index["id"] == bad_test.rsplit("/", 1)[1]][0]
    assert test_images[black].max() == 0
    fold_of = load_folds(root / "folds" / "statefarm.csv", train_index, cache)
    assert len(fold_of) == len(train_index), "the folds line up with the cache without the dropped image"
    assert "1 unreadable" not in prepare.summary(cache) and "2 unreadable image(s) skipped" in prepare.summary(cache)


def test_skipping_stops_when_a_class_loses_every_image_or_too_many_are_unreadable():
    train = pd.DataFrame({"label": ["a"] * 195 + ["b"] * 5})
    indexes = {"train": train, "test": pd.DataFrame({"id": range(100)})}
    fail = [(row, f"train/{row}.jpg", "cut short") for row in range(195, 200)]  # all of b: 5 of 300 images
    with pytest.raises(ImageError, match=r"every train image of class\(es\) \['b'\]"):
        prepare.check_skipped({"train": fail, "test": []}, indexes)
    many = [(row, f"train/{row}.jpg", "cut short") for row in range(16)]  # 16 of 300: more than 5%
    with pytest.raises(ImageError, match="16 of 300 images are unreadable"):
        prepare.check_skipped({"train": many, "test": []}, indexes)
    prepare.check_skipped({"train": many[:10], "test": [(0, "test/0.jpg", "cut short")]}, indexes)  # a few: fine


@pytest.mark.parametrize("victims", ["a whole class", "many images"])
def test_skip_unreadable_still_stops_on_a_damaged_archive(tmp_path, victims):
    """Skipping is for a few bad frames: a class left without images, or more than 5% unreadable, stops."""
    comp = get_competition("statefarm")
    good = write_demo_archive(comp, tiny_params().comp("statefarm").data.demo, 0, tmp_path / "good.zip")
    files = read_zip(good)
    images = sorted(k for k in files if k.endswith(".jpg"))
    bad = [k for k in images if "/train/c4/" in k] if victims == "a whole class" else images[::8]
    for victim in bad:
        files[victim] = files[victim][:100]
    params = tiny_params(**{"statefarm.data.source": str(write_zip(tmp_path / "bad.zip", files)),
                            "statefarm.prepare.skip_unreadable": True})
    root = tmp_path / "root"
    download.run(params, "statefarm", root)
    with pytest.raises(ImageError, match="every train image of class|more than 5%"):
        prepare.run(params, "statefarm", root)
    assert not (root / "data" / "statefarm" / "cache").exists()


def test_the_stage_command_with_decoding_processes_prints_no_warning(tmp_path):
    """As DVC runs it (`python -m pipeline.stages.prepare`, so the module is __main__), with worker processes: no
    runpy RuntimeWarning about the module being imported twice."""
    import subprocess
    import sys

    import yaml

    from conftest import REPO

    params = tiny_params(**{"statefarm.speed.prepare_workers": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
    download.run(params, "statefarm", tmp_path)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare", "statefarm"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    assert np.load(tmp_path / "data" / "statefarm" / "cache" / "train.npy").shape[0] > 0


def test_pixel_csvs_read_in_chunks_give_their_pixels_and_name_a_bad_value(tmp_path, monkeypatch):
    """Digit Recognizer's CSVs are parsed a few rows at a time (here 7, so a 50-row file takes 8 chunks): the cache
    holds each row's pixels exactly, and a value outside 0-255 in a later chunk still stops the stage."""
    from test_registry import _params, tiny_section

    monkeypatch.setattr(prepare, "PIXEL_ROWS", 7)
    archive = write_demo_archive(get_competition("digits"), DemoParams(train_per_class=5, test=9), 0,
                                 tmp_path / "digits.zip")
    params = _params("digits", tiny_section(str(archive), (28, 28)))
    raw = download.run(params, "digits", tmp_path / "ok")
    cache = prepare.run(params, "digits", tmp_path / "ok")
    with zipfile.ZipFile(archive) as zf, zf.open("train.csv") as f:
        pixels = pd.read_csv(f).drop(columns="label").to_numpy()
    rows = pd.read_csv(raw / "train.csv")["member"].to_numpy()  # the index's order: each row's line in the CSV
    assert np.array_equal(np.load(cache / "train.npy").reshape(len(pixels), -1), pixels[rows])
    files = read_zip(archive)
    test = pd.read_csv(io.BytesIO(files["test.csv"]))
    test.iloc[8, 5] = 300  # in the second chunk of 7 rows
    files["test.csv"] = test.to_csv(index=False).encode()
    (tmp_path / "bad").mkdir()
    bad = write_zip(tmp_path / "bad" / "digits.zip", files)
    params = _params("digits", tiny_section(str(bad), (28, 28)))
    download.run(params, "digits", tmp_path / "bad")
    with pytest.raises(ImageError, match="pixel values outside 0-255 \\(from 0 to 300\\)"):
        prepare.run(params, "digits", tmp_path / "bad")
