"""Pictures: matplotlib without a display, saved atomically as PNG."""

from __future__ import annotations

import os
import textwrap
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


LABEL_PT = 9  # the class names' font size on a matrix's axes
LABEL_CHARS = 24  # a class name longer than this is wrapped onto more lines
MIN_CELL = 0.45  # inches: a matrix cell's side when its labels are short


def _largest(texts: list[str], rotation: float) -> tuple[float, float]:
    """The widest and the tallest of `texts` as drawn at LABEL_PT and `rotation`, in inches."""
    plt = pyplot()
    fig = plt.figure()
    renderer = fig.canvas.get_renderer()
    boxes = [fig.text(0, 0, t, fontsize=LABEL_PT, rotation=rotation).get_window_extent(renderer) for t in texts]
    plt.close(fig)
    return max(b.width for b in boxes) / fig.dpi, max(b.height for b in boxes) / fig.dpi


def matrix_figure(shade: np.ndarray, counts: np.ndarray, x_labels: list[str], y_labels: list[str]):
    """A square matrix (a confusion matrix): cells shaded by `shade` (0 to 1) with `counts` written in them, each
    axis's labels wrapped at LABEL_CHARS and never overlapping, however long: the cells are sized from the largest
    label (no fixed figure size to squeeze them into), and the x axis's labels turn upright when one is wider than
    a cell. Returns (figure, axes) for the caller's axis titles."""
    x_labels = [textwrap.fill(s, LABEL_CHARS) for s in x_labels]
    y_labels = [textwrap.fill(s, LABEL_CHARS) for s in y_labels]
    y_wide, y_tall = _largest(y_labels, 0)
    x_wide, x_tall = _largest(x_labels, 0)
    cell = max(MIN_CELL, 1.2 * y_tall)
    upright = x_wide * 1.2 > cell
    if upright:
        x_wide, x_tall = _largest(x_labels, 90)
    cell = max(cell, 1.2 * x_wide)
    n = len(x_labels)
    left, bottom, top, right = y_wide + 0.6, x_tall + 0.6, 0.5, 0.2
    width, height = left + n * cell + right, bottom + n * cell + top
    plt = pyplot()
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, n * cell / width, n * cell / height))
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), x_labels, fontsize=LABEL_PT, rotation=90 if upright else 0)
    ax.set_yticks(range(n), y_labels, fontsize=LABEL_PT)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=8,
                    color="white" if shade[i, j] > 0.6 else "black")
    return fig, ax


def save_report_png(fig, out: Path) -> Path:
    """The report's pictures: a little smaller than the default, many share a page."""
    return save_png(fig, out, dpi=90)
