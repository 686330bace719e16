"""The grounding parser after an unclosed tag: the unclosed tag is malformed, the well-formed tag after it is parsed
(and scored). Hand-worked cases."""

from __future__ import annotations

from isaac_train.eval.metrics import grounding
from isaac_train.processing.grounding import parse_grounding


def test_a_well_formed_box_after_an_unclosed_one_is_parsed() -> None:
    text = '<point_box mention="a"> (1,2) <point_box mention="b"> (10,20) (30,40) </point_box>'
    (g,) = parse_grounding(text)
    assert (g.mention, g.box) == ("b", (10.0, 20.0, 30.0, 40.0))


def test_unclosed_tags_of_every_kind() -> None:
    assert [(g.kind, g.points) for g in parse_grounding("<point> (1,2) <point> (3,4) </point>")] == [
        ("point", [(3.0, 4.0)])]
    text = "<polygon> (0,0) (5,0) <point_box> (1,1) (2,2) </point_box> <point> (7,8) </point> <point> (9,9)"
    assert [g.kind for g in parse_grounding(text)] == ["box", "point"]  # the polygon and the last point: unclosed
    # a closing tag of another kind does not close it: the point is unclosed, the box after it counts
    assert [g.kind for g in parse_grounding("<point> (1,2) </point_box> <point_box> (1,1) (2,2) </point_box>")] == [
        "box"]


def test_unclosed_child_inside_a_collection_and_an_unclosed_collection() -> None:
    inside = '<collection mention="c"> <point> (1,2) <point> (3,4) </point> </collection>'
    (g,) = parse_grounding(inside)
    assert (g.mention, g.points) == ("c", [(3.0, 4.0)])
    # the first collection is never closed (another opens first): its child stands alone, without its mention
    text = ('<collection mention="x"> <point> (1,2) </point> '
            '<collection mention="y"> <point> (3,4) </point> </collection>')
    assert [(g.mention, g.points) for g in parse_grounding(text)] == [(None, [(1.0, 2.0)]), ("y", [(3.0, 4.0)])]


def test_well_formed_text_parses_as_before() -> None:
    text = ('<point_box mention="cat"> (1,2) (3,4) </point_box> and <point_box> (1,2) </point_box> '
            '<collection mention="m"> <point> (5,6) </point> </collection>')
    assert [(g.kind, g.mention) for g in parse_grounding(text)] == [("box", "cat"), ("point", "m")]


def test_scoring_counts_the_unclosed_tag_as_malformed_and_matches_the_next() -> None:
    expected = '<point_box mention="b"> (10,20) (30,40) </point_box>'
    generated = '<point_box mention="b"> (11,20) <point_box mention="b"> (10,20) (30,40) </point_box>'
    counts = grounding(generated, expected)
    assert counts["true_positives"] == 1 and counts["predicted_boxes"] == 1 and counts["malformed"] == 1
