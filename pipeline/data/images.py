"""Image bytes and pixel rows -> the uint8 arrays every later step reads: the one decoder, used by the prepare stage
on the archive and by a code competition's notebook on Kaggle's test folder, so both see the same pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.errors import ImageError


MAX_IMAGE_BYTES = 256 << 20
"""The most one image file may unpack to: a photo is a few MiB; more is a damaged archive or a zip bomb."""

ARCHIVE_ADVICE = ("The archive is damaged; download it again (or delete that image and its row from the CSVs if you "
                  "built the archive yourself).")


def decode(data: bytes, size: tuple[int, int], where: str, out: np.ndarray | None = None,
           channels: int = 3, advice: str = ARCHIVE_ADVICE) -> np.ndarray:
    """Image bytes (JPEG or PNG) -> uint8 (height, width, channels) in `out` (new when None): RGB, or grey with 1
    channel. A JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled decoding, through
    OpenCV) whenever the image is at least that much larger than `size`, then resized with area averaging. EXIF
    orientation is ignored, as Kaggle's labels were made on the stored pixels. An unreadable image, or one whose
    header claims more pixels than PIL's decompression-bomb limit, raises ImageError naming `where`, with `advice`."""
    import cv2  # here: a worker process imports it once; the stage's other imports need it not

    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only: the size, and that it is an image at all
            full_w, full_h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(where, e, advice) from None
    except Image.DecompressionBombError:  # before a byte of pixels is decoded
        raise _unreadable(where, "its header claims more pixels than the "
                          f"{2 * Image.MAX_IMAGE_PIXELS:,} an image may have: a decompression bomb or a "
                          "damaged header", advice) from None
    factor = max((f for f in (8, 4, 2) if full_w // f >= width and full_h // f >= height), default=1)
    if channels == 1:
        flag = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[factor]
    else:
        flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
        if arr is None:  # OpenCV's answer to a truncated or corrupt image
            raise _unreadable(where, "the image data is cut short or corrupt", advice)
        arr = _resized(arr, height, width)
        out = np.empty((height, width, channels), np.uint8) if out is None else out
        if channels == 1:
            out[..., 0] = arr
            return out
        rgb = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=out)
        if not np.shares_memory(rgb, out):  # OpenCV returns a new array, silently, for a dst it cannot use
            out[...] = rgb
        return out
    except cv2.error as e:
        raise _unreadable(where, f"OpenCV: {str(e).strip().splitlines()[-1]}", advice) from None


def _resized(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging to shrink; linear to enlarge (area would be blocky)."""
    import cv2

    if arr.shape[:2] == (height, width):
        return arr
    shrink = arr.shape[0] >= height and arr.shape[1] >= width
    return cv2.resize(arr, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def pixel_row(values: np.ndarray, shape: tuple[int, int], size: tuple[int, int], out: np.ndarray) -> np.ndarray:
    """One CSV row of pixel values (Digit Recognizer's `pixel0..pixel783`) -> its (height, width, 1) image in
    `out`: the row reshaped to `shape` and given the channel dimension every image has (the lesson's "expand
    dims"), resized to `size` when that differs."""
    out[...] = _resized(values.reshape(shape), *size)[..., np.newaxis]
    return out


def _unreadable(where: str, why, advice: str) -> ImageError:
    return ImageError(f"{where} is not a readable image ({why}). {advice}")
