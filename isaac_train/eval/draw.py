"""Grounding drawn on its image, for eval tables: expected boxes in green, generated ones in red (points as
crosses), each labelled with its mention; coordinates mapped from Isaac's 0-1000 grid to the image's pixels."""

from __future__ import annotations

import io

import PIL.Image
import PIL.ImageDraw

from ..processing.grounding import Grounding, parse_grounding

EXPECTED, GENERATED = (0, 200, 0), (230, 0, 0)


def _draw(draw: PIL.ImageDraw.ImageDraw, g: Grounding, colour: tuple[int, int, int], width: int) -> None:
    if g.kind == "point":
        (x, y), r = g.points[0], 2 + width
        draw.line([(x - r, y - r), (x + r, y + r)], fill=colour, width=width)
        draw.line([(x - r, y + r), (x + r, y - r)], fill=colour, width=width)
        anchor = (x + r, y)
    elif g.kind == "polygon":
        draw.polygon(g.points, outline=colour, width=width)
        anchor = g.points[0]
    else:
        (x1, y1), (x2, y2) = g.points
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=colour, width=width)
        anchor = (min(x1, x2), min(y1, y2))
    if g.mention:
        draw.text(anchor, g.mention[:24], fill=colour)


def draw_grounding(image: bytes | PIL.Image.Image, expected: str, generated: str) -> PIL.Image.Image:
    """A copy of the image with the expected (green) and generated (red) groundings; unchanged when neither
    answer holds any."""
    img = PIL.Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image
    img = img.convert("RGB")
    found = [(g, EXPECTED) for g in parse_grounding(expected)] + [(g, GENERATED) for g in parse_grounding(generated)]
    if not found:
        return img
    draw = PIL.ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 200))
    for g, colour in found:
        _draw(draw, g.to_pixels(*img.size), colour, width)
    return img
