"""Inputs crafted to hurt: an image whose header claims 20000x20000 pixels, a zip member whose directory claims
300 MiB, and a submission whose ids look like NA. Each is refused in one line naming it, or (the two images, with
`prepare.skip_unreadable`) skipped like any other unreadable image; none gives a traceback or a wrong answer."""

import io
import struct
import zipfile
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import read_zip, tiny_params, write_zip
from pipeline.commands.submit import read_checked_submission
from pipeline.core.competitions import get_competition
from pipeline.core.errors import ImageError
from pipeline.core.paths import EXTRACTED, Paths
from pipeline.data.demo import write_demo_archive
from pipeline.data.images import MAX_IMAGE_BYTES, decode
from pipeline.scoring.submission import make_submission
from pipeline.stages import download, folds, prepare

COMP = "statefarm"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming `width` x `height` RGB pixels, with one row of data: 80 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * width)))
            + _chunk(b"IEND", b""))


def claiming(path, member: str, size: int) -> None:
    """Make the central directory of the zip at `path` say that `member` unpacks to `size` bytes."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46 : start + 46 + name_length].decode() == member:
            struct.pack_into("<I", data, start + 24, size)
            path.write_bytes(bytes(data))
            return
        start += 4
    raise AssertionError(f"{member} not in {path}")


def _archive_with(tmp_path, image: bytes | None = None, skip: bool = False, claim: bool = False):
    """The tiny State Farm demo archive with one train image's bytes replaced by `image`, or (`claim`) its
    directory entry claiming 300 MiB; params reading it."""
    good = write_demo_archive(get_competition(COMP), tiny_params().comp(COMP).data.demo, 0, tmp_path / "good.zip")
    files = read_zip(good)
    victim = sorted(k for k in files if k.startswith("imgs/train/c2/"))[1]
    if image is not None:
        files[victim] = image
    bad = write_zip(tmp_path / "bad.zip", files)
    if claim:
        claiming(bad, victim, 300 << 20)
    params = tiny_params(**{f"{COMP}.data.source": str(bad), f"{COMP}.prepare.skip_unreadable": skip})
    return params, victim


def test_the_crafted_png_is_a_real_png_whose_header_claims_20000_by_20000():
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS  # no bomb check: only to read the header
    try:
        with Image.open(io.BytesIO(bomb_png())) as img:
            assert img.size == (20000, 20000) and img.format == "PNG"
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_a_decompression_bomb_is_refused_in_one_line():
    with pytest.raises(ImageError) as e:
        decode(bomb_png(), (24, 32), "imgs/train/c2/bomb.jpg")
    message = str(e.value)
    assert "\n" not in message and "imgs/train/c2/bomb.jpg" in message and "decompression bomb" in message
    assert "download it again" in message


@pytest.mark.parametrize("skip", [False, True])
def test_a_decompression_bomb_in_the_archive_stops_prepare_or_is_skipped(tmp_path, skip):
    params, victim = _archive_with(tmp_path, bomb_png(), skip=skip)
    root = tmp_path / "root"
    download.run(params, COMP, root)
    if not skip:
        with pytest.raises(ImageError, match=f"{victim}.*decompression bomb"):
            prepare.run(params, COMP, root)
        return
    folds.run(params, COMP, root)
    cache = prepare.run(params, COMP, root)
    skipped = pd.read_csv(cache / "skipped.csv", dtype=str)
    assert list(skipped["file"].str.split(":").str[1]) == [victim] and "decompression bomb" in skipped["error"][0]
    assert "1 unreadable image(s) skipped" in prepare.summary(cache)


def test_a_member_claiming_more_than_an_image_may_is_refused_before_it_is_read(tmp_path):
    params, victim = _archive_with(tmp_path, claim=True)
    raw = download.run(params, COMP, tmp_path / "root")
    index = pd.read_csv(raw / "train.csv", dtype=str)
    container = index.loc[index["member"] == victim, "container"].iloc[0]
    with zipfile.ZipFile(raw / container) as zf:
        assert zf.getinfo(victim).file_size == 300 << 20 > MAX_IMAGE_BYTES
    with pytest.raises(ImageError) as e:
        prepare.run(params, COMP, tmp_path / "root")
    message = str(e.value)
    assert "\n" not in message and f"{container}:{victim} would unpack to 300 MiB" in message
    assert f"more than the {MAX_IMAGE_BYTES >> 20} MiB one image may" in message


def test_a_member_claiming_too_much_is_skipped_with_skip_unreadable(tmp_path):
    params, victim = _archive_with(tmp_path, skip=True, claim=True)
    root = tmp_path / "root"
    download.run(params, COMP, root)
    folds.run(params, COMP, root)
    cache = prepare.run(params, COMP, root)
    skipped = pd.read_csv(cache / "skipped.csv", dtype=str)
    assert list(skipped["file"].str.split(":").str[1]) == [victim] and "300 MiB" in skipped["error"][0]


@pytest.mark.parametrize("ids", [["NA", "img_2.jpg", "null"], ["N/A", "nan", "None"]])
def test_a_probability_submission_whose_ids_look_like_na_is_read_as_text(tmp_path, ids):
    comp = get_competition(COMP)
    paths = Paths(COMP, tmp_path)
    sample = paths.raw / EXTRACTED / "sample_submission.csv"
    sample.parent.mkdir(parents=True)
    uniform = np.full((len(ids), len(comp.classes)), 1 / len(comp.classes))
    make_submission(comp, ids, uniform).to_csv(sample, index=False)
    paths.submission.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(comp.classes)), len(ids))
    make_submission(comp, ids, probs).to_csv(paths.submission, index=False)
    path, sub = read_checked_submission(COMP, tmp_path)
    assert path == paths.submission and list(sub[comp.id_column]) == ids
    assert sub[list(comp.submission_columns)].dtypes.map(lambda t: t.kind == "f").all(), "probabilities stay numbers"
