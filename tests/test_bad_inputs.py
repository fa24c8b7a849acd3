"""Inputs crafted to hurt: an image whose header claims 20000x20000 pixels. It is refused in one line naming it,
or with `prepare.skip_unreadable` skipped like any other unreadable image; it never gives a traceback."""

import io
import struct
import zlib

import pandas as pd
import pytest
from PIL import Image

from conftest import read_zip, tiny_params, write_zip
from pipeline.core.competitions import get_competition
from pipeline.core.errors import ImageError
from pipeline.data.demo import write_demo_archive
from pipeline.data.images import decode
from pipeline.stages import download, folds, prepare

COMP = "statefarm"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming `width` x `height` RGB pixels, with one row of data: 80 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * width)))
            + _chunk(b"IEND", b""))


def _archive_with(tmp_path, image: bytes, skip: bool = False):
    """The tiny State Farm demo archive with one train image's bytes replaced by `image`; params reading it."""
    good = write_demo_archive(get_competition(COMP), tiny_params().comp(COMP).data.demo, 0, tmp_path / "good.zip")
    files = read_zip(good)
    victim = sorted(k for k in files if k.startswith("imgs/train/c2/"))[1]
    files[victim] = image
    bad = write_zip(tmp_path / "bad.zip", files)
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
