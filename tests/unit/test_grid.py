"""The one grid rule (isaac_train/processing/grid.py): exact arithmetic of the numbers as written, halves up, at
least one grid unit a side; the COCO converter and the demo use the same function. Expected values worked by hand
in the comments."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from data_tools import coco
from isaac_train.data import demo
from isaac_train.processing import grid


def test_exact_reads_numbers_as_written() -> None:
    assert grid.exact(0.19) == Fraction(19, 100)  # not the binary 0.1899999999999999911182...
    assert grid.exact("1050.53") == Fraction(105053, 100) and grid.exact(7) == 7
    for bad in (True, float("inf"), float("nan"), "nan", "abc", None):
        with pytest.raises(ValueError):
            grid.exact(bad)


def test_exact_halves_round_up() -> None:
    # The box on a 16 x 3979 image: x2 = 0.19 + 0.49 = 0.68 -> 0.68 * 1000 / 16 = 42.5 -> 43 (half up);
    # x1 = 190 / 16 = 11.875 -> 12; y1 = 1273550 / 3979 = 320.07 -> 320; y2 = 2324080 / 3979 = 584.09 -> 584.
    assert coco.coco_box_to_grid([0.19, 1273.55, 0.49, 1050.53], 16, 3979) == (12, 320, 43, 584)
    assert math.floor((0.19 + 0.49) * 1000 / 16 + 0.5) == 42  # what floating point gave
    assert grid.to_grid(10.5, 40) == 263  # 262.5 -> 263, where round() gives 262
    assert grid.to_grid(4, 64) == 63 and round(4 * 1000 / 64) == 62  # 62.5


def test_thin_boxes_keep_one_grid_unit() -> None:
    # [10, 10, 0.4, 20] on 640 x 480: x1 = 15.625 -> 16 and x2 = 16.25 -> 16 (zero width before); the centre,
    # 10.2 px = 15.9375 on the grid, lies in the cell [15, 16]. y1 = 20.83 -> 21, y2 = 62.5 -> 63.
    assert coco.coco_box_to_grid([10, 10, 0.4, 20], 640, 480) == (15, 21, 16, 63)
    # at the right edge: 639.8 and 639.9 px both round to 1000; the centre 999.77 is in the cell [999, 1000]
    assert coco.coco_box_to_grid([639.8, 0, 0.1, 480], 640, 480) == (999, 0, 1000, 1000)
    # at the left edge, partly outside: [-5, 0, 5.2, 1] -> corners -5 and 0.2 -> 0 and 0, centre < 0 -> [0, 1]
    assert coco.coco_box_to_grid([-5, 0, 5.2, 1], 640, 480)[::2] == (0, 1)
    with pytest.raises(ValueError, match="empty"):
        grid.box_to_grid(5, 5, 5, 9, 10, 10)


def test_every_box_has_area_and_covers_its_rounded_corners() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        size = rng.randint(1, 5000)
        lo = Fraction(rng.randint(0, size * 100), 100)
        hi = lo + Fraction(rng.randint(1, 400), 100)  # down to 0.01 px wide
        g1, _, g2, _ = grid.box_to_grid(lo, 0, hi, 1, size, 1)
        assert 0 <= g1 < g2 <= 1000 and g2 - g1 >= 1
        r1, r2 = grid.to_grid(lo, size), grid.to_grid(hi, size)
        assert g1 <= r1 and r2 <= g2 and (g1, g2) == ((r1, r2) if r2 > r1 else (g1, g1 + 1))


def test_the_demo_and_the_converter_round_alike() -> None:
    # 4, 12, 20, 28 px of 64: 62.5, 187.5, 312.5, 437.5 -> all up; round() gave 62, 188, 312, 438
    assert demo.grid_box([4, 12, 20, 28], 64, 64) == [63, 188, 313, 438]
    rng = random.Random(1)
    for _ in range(2000):
        w, h = rng.randint(32, 700), rng.randint(32, 700)
        x0, y0 = rng.randrange(w - 1), rng.randrange(h - 1)
        x1, y1 = rng.randint(x0 + 1, w), rng.randint(y0 + 1, h)
        assert demo.grid_box([x0, y0, x1, y1], w, h) == list(coco.coco_box_to_grid([x0, y0, x1 - x0, y1 - y0], w, h))
