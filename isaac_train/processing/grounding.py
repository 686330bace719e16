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

_OPEN = re.compile(r"<(point_box|point|polygon|collection)\b([^>]*)>")
_CLOSE = {tag: re.compile(rf"</{tag}\s*>") for tag in ("point_box", "point", "polygon", "collection")}
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


def _closing(text: str, opening: re.Match[str]) -> re.Match[str] | None:
    """The closing tag of `opening`, or None when it is unclosed: no closing tag follows, or another tag opens
    before it (for a collection: another collection; its children are tags)."""
    tag = opening.group(1)
    close = _CLOSE[tag].search(text, opening.end())
    if close is None:
        return None
    if tag == "collection":
        inner = _OPEN.search(text, opening.end(), close.start())
        while inner is not None and inner.group(1) != "collection":
            inner = _OPEN.search(text, inner.end(), close.start())
    else:
        inner = _OPEN.search(text, opening.end(), close.start())
    return None if inner is not None else close


def parse_grounding(text: str, inherited: dict[str, str] | None = None) -> list[Grounding]:
    """All grounded objects in `text`, in order; collections are flattened into their children.

    Malformed tags are skipped: a model's output is not trusted. A tag with the wrong number of coordinates for
    its kind is passed over whole; an unclosed one (another tag opens before its closing tag, or none follows)
    is passed over alone, and parsing goes on at the next tag, so a well-formed tag after it still counts.
    """
    out: list[Grounding] = []
    pos = 0
    while (match := _OPEN.search(text, pos)) is not None:
        close = _closing(text, match)
        if close is None:
            pos = match.end()
            continue
        pos = close.end()
        tag, attr_text = match.groups()
        body = text[match.end():close.start()]
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
