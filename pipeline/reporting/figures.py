"""Pictures: matplotlib without a display, saved atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display, no network), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, out: Path, dpi: int = 100) -> Path:
    """Write `fig` to `out` whole or not at all, and free it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        pyplot().close(fig)
        tmp.unlink(missing_ok=True)
    return out


def show(ax, image: np.ndarray) -> None:
    """A cached image (height, width, 3 or 1 channels) as it is: greyscale ones in grey, not false colour."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)


def save_report_png(fig, out: Path) -> Path:
    """The report's pictures: a little smaller than the default, many share a page."""
    return save_png(fig, out, dpi=90)
