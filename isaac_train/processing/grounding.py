"""Parser of Isaac's grounding output: points, boxes, polygons and collections (isaac_spec.md §8.4).

    <point mention="cat" t=0.5> (x,y) </point>
    <point_box mention="traffic light"> (808,248) (863,386) </point_box>
    <polygon mention="roof"> (x1,y1) (x2,y2) (x3,y3) ... </polygon>
    <collection mention="shapes"> <point> (10,20) </point> ... </collection>

Coordinates are integers on a 0-1000 grid relative to the original image; `to_pixels` maps them back with
x*W/1000 and y*H/1000. Attribute values may be quoted or bare; `mention` is HTML-unescaped. Children of a
collection inherit its mention, t and asset_idx unless they set their own.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field, replace

_TAG = re.compile(r"<(point_box|point|polygon|collection)\b([^>]*)>(.*?)</\1\s*>", re.DOTALL)
_ATTR = re.compile(r"""([A-Za-z_][\w-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_COORD = re.compile(r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)")


@dataclass
class Grounding:
    """One grounded object; `points` are (x, y) on the 0-1000 grid (or pixels after `to_pixels`)."""

    kind: str  # "point" | "box" | "polygon"
    points: list[tuple[float, float]]
    mention: str | None = None
    t: float | None = None
    asset_idx: int | None = None
    attrs: dict[str, str] = field(default_factory=dict)

    def to_pixels(self, width: int, height: int) -> Grounding:
        """Map 0-1000 coordinates to pixels of an image of `width` x `height` (the original image)."""
        return replace(self, points=[(x * width / 1000, y * height / 1000) for x, y in self.points])

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """(x1, y1, x2, y2) for a box: top-left then bottom-right."""
        if self.kind != "box":
            return None
        (x1, y1), (x2, y2) = self.points
        return x1, y1, x2, y2


def _attrs(text: str) -> dict[str, str]:
    return {m.group(1): html.unescape(next(g for g in m.groups()[1:] if g is not None)) for m in _ATTR.finditer(text)}


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_grounding(text: str, inherited: dict[str, str] | None = None) -> list[Grounding]:
    """All grounded objects in `text`, in order; collections are flattened into their children.

    Malformed tags (wrong number of coordinates for their kind) are skipped: a model's output is not trusted.
    """
    out: list[Grounding] = []
    for match in _TAG.finditer(text):
        tag, attr_text, body = match.groups()
        attrs = {**(inherited or {}), **_attrs(attr_text)}
        if tag == "collection":
            out.extend(parse_grounding(body, attrs))
            continue
        points = [(float(x), float(y)) for x, y in _COORD.findall(body)]
        kind = {"point": "point", "point_box": "box", "polygon": "polygon"}[tag]
        needed = {"point": 1, "box": 2}.get(kind)
        if (needed is not None and len(points) != needed) or (kind == "polygon" and len(points) < 3):
            continue
        out.append(Grounding(
            kind=kind, points=points, mention=attrs.get("mention"), t=_float(attrs.get("t")),
            asset_idx=_int(attrs.get("asset_idx")), attrs=attrs,
        ))
    return out
