"""Task metrics on hand-worked cases: text match, multiple choice, grounding (malformed and partial outputs,
several boxes, swapped corners, points, mentions), the Wilson interval."""

from __future__ import annotations

import pytest

from isaac_train.eval import (
    chosen_option,
    contains,
    exact_match,
    grounding,
    grounding_summary,
    multiple_choice,
    normalize,
    wilson_interval,
)
from isaac_train.eval.metrics import box_iou


def box(x1, y1, x2, y2, mention="cat"):
    return f'<point_box mention="{mention}"> ({x1},{y1}) ({x2},{y2}) </point_box>'


def test_text_match_after_light_normalisation():
    assert normalize('  "The circle is  Green."  ') == "the circle is green"
    assert exact_match("The circle is green.", "the circle is green") == 1.0
    assert exact_match("The circle is green", "The circle is blue") == 0.0
    assert contains("I think the answer is 3, yes", "3") == 1.0
    assert contains("two", "3") == 0.0


@pytest.mark.parametrize(("generated", "letter"), [
    ("B", "B"), ("(C)", "C"), ("Answer: D.", "D"), ("The answer is E", "E"), ("A. red", "A"), ("F.", "F"),
    ("the answer is b", None), ("I think so", None), ("A red circle", None), ("", None)])
def test_chosen_option(generated, letter):
    assert chosen_option(generated) == letter


def test_multiple_choice_by_letter_or_option_text():
    options = ["red", "green", "blue"]
    assert multiple_choice("(B)", "B") == 1.0
    assert multiple_choice("green", "B", options) == 1.0
    assert multiple_choice("Blue.", "green", options) == 0.0
    assert multiple_choice("none of them", "A", options) == 0.0


def test_box_iou_hand_worked_and_swapped_corners():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((10, 10, 0, 0), (0, 0, 10, 10)) == 1.0  # corners given bottom-right first
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_grounding_several_boxes_matched_one_to_one():
    expected = box(0, 0, 100, 100) + box(200, 200, 300, 300)
    # the second prediction overlaps box 1 at IoU 0.5 exactly; the third is far from everything
    generated = box(200, 200, 300, 300) + box(0, 0, 100, 50) + box(600, 600, 700, 700)
    counts = grounding(generated, expected)
    assert counts["expected_boxes"] == 2 and counts["predicted_boxes"] == 3
    assert counts["true_positives"] == 2
    assert counts["iou_sum"] == pytest.approx(1.5)
    summary = grounding_summary(counts)
    assert summary["precision"] == pytest.approx(2 / 3) and summary["recall"] == 1.0
    assert summary["f1"] == pytest.approx(0.8) and summary["mean_iou"] == pytest.approx(0.75)


def test_a_duplicate_prediction_matches_only_once():
    counts = grounding(box(0, 0, 100, 100) * 2, box(0, 0, 100, 100))
    assert counts["true_positives"] == 1 and counts["predicted_boxes"] == 2


def test_mentions_keep_objects_apart():
    expected = box(0, 0, 100, 100, "cat") + box(500, 500, 600, 600, "dog")
    generated = box(500, 500, 600, 600, "cat") + box(0, 0, 100, 100, "dog")  # right boxes, wrong names
    assert grounding(generated, expected)["true_positives"] == 0
    assert grounding(box(0, 0, 100, 100, "Cat"), expected)["true_positives"] == 1


def test_malformed_and_partial_output_is_counted_not_raised():
    expected = box(0, 0, 100, 100)
    generated = '<point_box mention="cat"> (0,0) </point_box> <point_box mention="cat"> (0,0) (100,'
    counts = grounding(generated, expected)
    assert counts["malformed"] == 2 and counts["predicted_boxes"] == 0 and counts["true_positives"] == 0
    assert grounding("no boxes at all", expected)["malformed"] == 0


def test_points_score_as_point_in_box_and_polygons_as_their_box():
    expected = box(0, 0, 100, 100) + box(200, 200, 300, 300)
    generated = ('<point mention="cat"> (50,50) </point> <point mention="cat"> (60,60) </point>'
                 '<polygon mention="cat"> (200,200) (300,200) (300,300) (200,300) </polygon>')
    counts = grounding(generated, expected)
    assert counts["predicted_points"] == 2 and counts["point_hits"] == 1  # two points, one box they fall in
    assert counts["predicted_boxes"] == 1 and counts["true_positives"] == 1
    assert grounding_summary(counts)["point_accuracy"] == 0.5


def test_collections_are_flattened():
    expected = box(0, 0, 100, 100, "shape") + box(200, 200, 300, 300, "shape")
    generated = ('<collection mention="shape"> <point_box> (0,0) (100,100) </point_box> '
                 '<point_box> (200,200) (300,300) </point_box> </collection>')
    assert grounding(generated, expected)["true_positives"] == 2


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0


def test_matching_prefers_more_true_positives_over_a_larger_total_iou():
    """Expected boxes x 0-100 and 22-83, predictions x 23-80 and 30-70 (all y 0-100). Pairing them in order gives
    IoUs 0.57 and 0.66 (2 matches at 0.5); crossed gives 0.93 and 0.40 (total 1.33 > 1.23, but 1 match). The
    count at the threshold comes first."""
    box = '<point_box mention="bar"> ({},0) ({},100) </point_box>'
    expected = box.format(0, 100) + " " + box.format(22, 83)
    generated = box.format(23, 80) + " " + box.format(30, 70)
    counts = grounding(generated, expected)
    assert counts["true_positives"] == 2
    assert counts["iou_sum"] == pytest.approx(0.57 + 40 / 61)
