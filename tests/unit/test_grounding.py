"""Isaac's grounding output grammar: points, boxes, polygons, collections, 0-1000 coordinates."""

from __future__ import annotations

from isaac_train.processing.grounding import parse_grounding


def test_box_from_the_readme_maps_to_pixels():
    (g,) = parse_grounding('<point_box mention="traffic light"> (808,248) (863,386) </point_box>')
    assert g.kind == "box" and g.mention == "traffic light"
    assert g.to_pixels(1000, 500).box == (808.0, 124.0, 863.0, 193.0)


def test_point_with_bare_attributes_and_time():
    (g,) = parse_grounding("<point mention=cat t=1.5> (10,20) </point>")
    assert (g.kind, g.mention, g.t, g.points) == ("point", "cat", 1.5, [(10.0, 20.0)])


def test_collection_children_inherit_and_override():
    text = ('<collection mention="a &amp; b" asset_idx=2> <point> (1,2) </point> '
            '<polygon mention="roof"> (0,0) (10,0) (5,5) </polygon> </collection>')
    point, polygon = parse_grounding(text)
    assert point.mention == "a & b" and point.asset_idx == 2
    assert polygon.kind == "polygon" and polygon.mention == "roof" and polygon.asset_idx == 2
    assert len(polygon.points) == 3


def test_malformed_tags_are_skipped_and_text_around_is_ignored():
    text = "See <point_box> (1,2) </point_box> and <polygon> (0,0) (1,1) </polygon> then <point> (3,4) </point>."
    assert [g.kind for g in parse_grounding(text)] == ["point"]
    assert parse_grounding("no grounding here") == []
