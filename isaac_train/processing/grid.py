"""Isaac's 0-1000 coordinate grid: the one rounding rule for every box we write (the COCO / RefCOCO converters in
data_tools and the demo's shapes, isaac_train/data/demo.py).

A pixel coordinate v of an image `size` pixels wide (or high) goes to g = floor(v * 1000 / size + 1/2), clamped to
[0, 1000]: halves round up, never to even as Python's round() does. The arithmetic is exact: each number is read
as the decimal it was written as (a float through its shortest repr, which is what a JSON or CSV file held for
any number of up to 15 significant digits), so that x + w of COCO's [0.19, ..., 0.49, ...] is 0.68, not
0.6799999999999999, and a corner on an exact half rounds up.

A box has at least one grid unit on each side: when both corners of a side round to the same line (a box thinner
than 1/1000 of the image, e.g. COCO's [10, 10, 0.4, 20] on a 640-wide image), that side becomes the one-unit cell
holding the box's centre, so the box keeps a positive area and still covers the object; a zero-area box would
never score IoU > 0 against anything.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

GRID = 1000
_HALF = Fraction(1, 2)


def exact(value: Any) -> Fraction:
    """A number as written -> an exact Fraction: ints as they are, floats through their shortest repr ("0.19",
    not the binary 0.18999999999999999), decimal strings, Decimals and Fractions exactly. ValueError for
    booleans, non-finite values and anything that is not a number."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a coordinate")
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return Fraction(repr(value))
    if isinstance(value, (str, Decimal)):
        try:
            return Fraction(str(value).strip())
        except (ValueError, ZeroDivisionError) as err:  # "inf", "nan", "1/0", "abc"
            raise ValueError(f"{value!r} is not a finite decimal number") from err
    raise ValueError(f"{value!r} ({type(value).__name__}) is not a number")


def to_grid(value: Any, size: Any) -> int:
    """One pixel coordinate of an image `size` pixels wide (or high) -> the grid: floor(v * 1000 / size + 1/2),
    exact, clamped to [0, 1000]."""
    size = exact(size)
    if size <= 0:
        raise ValueError(f"image size {size} must be positive")
    return min(GRID, max(0, math.floor(exact(value) * GRID / size + _HALF)))


def _side(lo: Fraction, hi: Fraction, size: Fraction) -> tuple[int, int]:
    """One side of a box (pixel corners lo < hi) -> grid corners at least one unit apart."""
    g1, g2 = to_grid(lo, size), to_grid(hi, size)
    if g2 > g1:
        return g1, g2
    # Both corners round to the same line: take the unit cell that holds the centre (it contains that line too).
    cell = min(GRID - 1, max(0, math.floor((lo + hi) / 2 * GRID / size)))
    return cell, cell + 1


def box_to_grid(x1: Any, y1: Any, x2: Any, y2: Any, width: Any, height: Any) -> tuple[int, int, int, int]:
    """A pixel box, top-left (x1, y1) and bottom-right (x2, y2) on continuous coordinates of a `width` x `height`
    image, -> Isaac's (x1, y1, x2, y2) on the grid: exact, half up, clamped, each side at least one unit.
    ValueError when a side is empty (x2 <= x1 or y2 <= y1) or the size is not positive."""
    w, h = exact(width), exact(height)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {width}x{height} must be positive")
    px1, py1, px2, py2 = exact(x1), exact(y1), exact(x2), exact(y2)
    if px2 <= px1 or py2 <= py1:
        raise ValueError(f"box ({x1}, {y1}) ({x2}, {y2}) is empty: the bottom-right corner must lie right of and "
                         "below the top-left one")
    gx1, gx2 = _side(px1, px2, w)
    gy1, gy2 = _side(py1, py2, h)
    return gx1, gy1, gx2, gy2


def xywh_corners(bbox: Any) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """COCO's [x, y, w, h] -> its exact corners (x, y, x + w, y + h)."""
    x, y, w, h = (exact(v) for v in bbox)
    return x, y, x + w, y + h


def xywh_to_grid(bbox: Any, width: Any, height: Any) -> tuple[int, int, int, int]:
    """COCO's [x, y, w, h] (pixels, top-left corner and size) -> Isaac (x1, y1, x2, y2) on the grid, the corners
    x + w and y + h summed exactly."""
    return box_to_grid(*xywh_corners(bbox), width, height)


def outside_image(x1: Any, y1: Any, x2: Any, y2: Any, width: Any, height: Any) -> bool:
    """Whether a pixel box lies wholly outside its image (no overlap of positive area with [0, W] x [0, H])."""
    return (exact(x2) <= 0 or exact(y2) <= 0 or exact(x1) >= exact(width) or exact(y1) >= exact(height))
