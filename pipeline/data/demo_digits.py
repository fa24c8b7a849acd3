"""The Digit Recognizer demo's digits: MNIST-like 28x28 greyscale images drawn from pen strokes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Digit Recognizer: MNIST-like 28x28 greyscale digits drawn from pen strokes. Each digit is a skeleton of one
# or more polylines on a box of height 1 (x right, y down), some with style variants (7 with a crossbar, an
# open or closed 4, 1 with a flag and a base...); every image jitters the skeleton, its slant, rotation, aspect
# and pen width, then is fitted into a 20x20 box and centred by centre of mass in 28x28, as MNIST was.
DIGIT_SIZE = 28
_DIGIT_BOX = 20  # MNIST's size-normalised box, inside the 28x28 frame
_SUPERSAMPLE = 4
_WARP_WAVES, _WARP_FREQ, _WARP_AMP = 3, 3.0, 0.05
_STROKE_OFFSET = 0.03


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 14) -> list:
    """Points of an elliptic arc from angle t0 to t1 (degrees; 0 is right, 90 is down, as y points down)."""
    t = np.radians(np.linspace(t0, t1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def _bezier(p0, p1, p2, n: int = 10) -> list:
    """Points of a quadratic Bezier curve from p0 to p2 pulled towards p1."""
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.asarray(p0) + 2 * t * (1 - t) * np.asarray(p1) + t**2 * np.asarray(p2)
    return [tuple(p) for p in pts]


def _digit_strokes(digit: int, rng: np.random.Generator) -> list:
    """The strokes of one handwritten `digit`: a style variant drawn from `rng` and its shape parameters
    jittered, as lists of (x, y) points."""
    u = rng.uniform
    style = rng.random()
    if digit == 0:
        start = u(-130, -60)
        return [_arc(0.35, 0.5, u(0.22, 0.34), 0.5, start, start + u(335, 390), 24)]
    if digit == 1:
        stem = [(u(0.4, 0.55), 0.0), (u(0.35, 0.5), 1.0)]
        strokes = [stem]
        if style < 0.55:  # a flag at the top
            strokes = [[(stem[0][0] - u(0.1, 0.2), u(0.2, 0.35)), stem[0], stem[1]]]
        if style < 0.2:  # and a base
            half = u(0.15, 0.25)
            strokes.append([(stem[1][0] - half, 1.0), (stem[1][0] + half, 1.0)])
        return strokes
    if digit == 2:
        top = _arc(0.35, 0.27, u(0.25, 0.32), u(0.22, 0.28), u(170, 210), u(365, 400))
        foot = (u(0.0, 0.1), 1.0)
        neck = [top[-1], foot] if style < 0.5 else _bezier(top[-1], (u(0.2, 0.4), u(0.65, 0.8)), foot)
        if style > 0.85:  # a small loop where the neck meets the base
            loop = _arc(foot[0] + 0.1, foot[1] - 0.08, 0.1, 0.08, 180, -160, 10)
            return [top + neck[1:] + loop[1:] + [(u(0.6, 0.75), 1.0 + u(-0.05, 0.03))]]
        return [top + neck[1:] + [(u(0.6, 0.75), 1.0 + u(-0.05, 0.03))]]
    if digit == 3:
        lower = _arc(0.33, 0.74, u(0.28, 0.34), u(0.23, 0.27), -90, u(140, 170), 16)
        if style < 0.25:  # a flat top
            top = [(u(0.0, 0.1), 0.0), (u(0.6, 0.7), 0.0), (u(0.25, 0.35), u(0.44, 0.5))]
            return [top + lower]
        upper = _arc(0.33, 0.26, u(0.24, 0.3), u(0.23, 0.27), u(190, 220), 450, 16)
        return [upper + lower[1:]]
    if digit == 4:
        bar_y = u(0.55, 0.7)
        stem_x = u(0.45, 0.6)
        if style < 0.5:  # closed: the diagonal meets the stem at its top
            apex = (stem_x + u(-0.05, 0.05), 0.0)
            return [[apex, (u(0.0, 0.08), bar_y), (u(0.7, 0.8), bar_y)], [apex, (stem_x, 1.0)]]
        return [[(u(0.05, 0.2), 0.0), (u(0.0, 0.08), bar_y), (u(0.7, 0.8), bar_y)],  # open
                [(stem_x, u(0.0, 0.2)), (stem_x, 1.0)]]
    if digit == 5:
        corner = (u(0.1, 0.2), 0.0)
        shoulder = (u(0.05, 0.15), u(0.4, 0.5))
        belly = _arc(0.35, 0.7, u(0.27, 0.33), u(0.27, 0.31), u(-150, -125), u(140, 165), 16)
        bar = [corner, (u(0.6, 0.75), u(-0.05, 0.03))]
        if style < 0.5:
            return [bar, [corner, shoulder] + belly]
        return [[bar[1], corner, shoulder] + belly]
    if digit == 6:
        r = u(0.24, 0.3)
        loop = _arc(0.35, 1.0 - r, u(0.24, 0.3), r, 180, -175, 20)
        lead = _bezier((u(0.5, 0.65), 0.0), (u(0.05, 0.2), u(0.1, 0.3)), loop[0])
        return [lead + loop[1:]]
    if digit == 7:
        top_y = u(-0.03, 0.03)
        foot = (u(0.15, 0.35), 1.0)
        corner = (u(0.65, 0.75), 0.0)
        stem = [corner, foot] if style < 0.6 else _bezier(corner, (u(0.4, 0.5), u(0.4, 0.6)), foot)
        strokes = [[(u(0.0, 0.1), top_y)] + stem]
        if style > 0.7:  # a crossbar through the middle of the stem
            mid = stem[len(stem) // 2]
            strokes.append([(mid[0] - u(0.15, 0.22), mid[1]), (mid[0] + u(0.12, 0.2), mid[1] + u(-0.03, 0.03))])
        return strokes
    if digit == 8:
        split = u(0.42, 0.5)
        top = _arc(0.35, split / 2, u(0.18, 0.26), split / 2, 0, 360, 18)
        bottom = _arc(0.35, (1 + split) / 2, u(0.24, 0.32), (1 - split) / 2, 0, 360, 18)
        if style < 0.5:
            return [top, bottom]
        # one stroke: an S down through the waist, then back up
        s = _arc(0.35, split / 2, 0.22, split / 2, -30, -270, 16)
        return [s + _arc(0.35, (1 + split) / 2, 0.28, (1 - split) / 2, -90, 270 - 30, 18) + [s[0]]]
    if digit == 9:
        r = u(0.24, 0.3)
        loop = _arc(0.35, r, u(0.24, 0.32), r, u(-10, 10), u(-360, -340), 18)
        right = (0.35 + u(0.24, 0.3), r)
        if style < 0.6:
            return [loop, [right, (u(0.45, 0.6), 1.0)]]
        return [loop, _bezier(right, (u(0.55, 0.65), 1.0), (u(0.15, 0.3), u(0.85, 0.95)), 8)]  # a hooked tail
    raise ValueError(f"not a digit: {digit}")


def digit_image(rng: np.random.Generator, digit: int) -> np.ndarray:
    """One 28x28 uint8 handwritten `digit`, white on black, in MNIST's layout; deterministic in `rng`."""
    strokes = [np.asarray(s, dtype=np.float64) for s in _digit_strokes(digit, rng)]
    # The hand's wander: a smooth random warp of the whole digit (a few sine waves across the box), each stroke
    # set down a little off, and a slight tremor along the pen's path.
    freq = rng.normal(0, _WARP_FREQ, (_WARP_WAVES, 2))
    phase = rng.uniform(0, 2 * np.pi, _WARP_WAVES)
    amp = rng.normal(0, _WARP_AMP, (_WARP_WAVES, 2))
    strokes = [s + np.sin(s @ freq.T + phase) @ amp + rng.normal(0, _STROKE_OFFSET, 2)
               + rng.normal(0, 0.006, s.shape) for s in strokes]
    slant = np.tan(np.radians(rng.uniform(-15, 15)))
    angle = np.radians(rng.uniform(-10, 10))
    aspect = rng.uniform(0.8, 1.25)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[aspect, -slant], [0.0, 1.0]])
    strokes = [(s - 0.5) @ (rot @ shear).T for s in strokes]
    # Size-normalise the inked shape (skeleton plus pen) into the 20x20 box, on a supersampled canvas.
    k = _SUPERSAMPLE
    pen = rng.uniform(1.5, 3.5) * k
    pts = np.concatenate(strokes)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    scale = (_DIGIT_BOX * k * rng.uniform(0.85, 1.0) - pen) / max(hi - lo)
    centre = DIGIT_SIZE * k / 2
    canvas = Image.new("L", (DIGIT_SIZE * k, DIGIT_SIZE * k), 0)
    draw = ImageDraw.Draw(canvas)
    for s in strokes:
        xy = [(float(x), float(y)) for x, y in (s - (lo + hi) / 2) * scale + centre]
        draw.line(xy, fill=255, width=int(round(pen)), joint="curve")
        for x, y in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    small = np.asarray(canvas.resize((DIGIT_SIZE, DIGIT_SIZE), Image.BOX), dtype=np.float64)
    # Centre by centre of mass, as MNIST did, give or take a pixel.
    ys, xs = np.indices(small.shape)
    mass = small.sum()
    dy = int(round(DIGIT_SIZE / 2 - 0.5 - (ys * small).sum() / mass)) + int(rng.integers(-1, 2))
    dx = int(round(DIGIT_SIZE / 2 - 0.5 - (xs * small).sum() / mass)) + int(rng.integers(-1, 2))
    shifted = np.zeros_like(small)
    src = small[max(0, -dy): DIGIT_SIZE - max(0, dy), max(0, -dx): DIGIT_SIZE - max(0, dx)]
    shifted[max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)
