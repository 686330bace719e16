"""objective=grpo's rewards (objectives/rewards.py) on answers worked by hand: text, choice, boxes, points, format,
auto, weights, user rewards by import path and what happens when one fails."""

from __future__ import annotations

import logging
import math

import pytest

from isaac_train.config.schema import ConfigError
from isaac_train.eval.samples import EvalSample
from isaac_train.objectives.rewards import BUILTINS, Rewards

HERE = "tests.objectives.test_rewards"
NOT_CALLABLE = 3


def my_reward(*, prompt, completion, expected, meta):
    """Keyword-only: fails unless called with exactly these four names."""
    return meta["scale"] * (completion == expected) + 0.01 * len(prompt)


def true_reward(**_):
    return True


def broken_reward(**_):
    raise RuntimeError("boom")


def none_reward(**_):
    return None


def inf_reward(**_):
    return math.inf


def sample(expected: str, **meta) -> EvalSample:
    return EvalSample("k1", [{"role": "user", "content": "q"}], expected, [], meta)


def box(x1, y1, x2, y2, mention=None) -> str:
    attr = f' mention="{mention}"' if mention else ""
    return f"<point_box{attr}> ({x1},{y1}) ({x2},{y2}) </point_box>"


def reward(name: str, s: EvalSample, completion: str) -> float:
    return BUILTINS[name](s, completion)


ONE = sample(box(0, 0, 100, 100))  # one expected box


def test_exact_normalises_case_spaces_and_trailing_punctuation():
    s = sample("Paris.")
    assert reward("exact", s, "  paris ") == 1.0
    assert reward("exact", s, "Lyon") == 0.0
    assert reward("exact", s, "Paris is the capital") == 0.0


def test_choice_by_letter_or_option_text():
    s = sample("B", options=["red", "green", "blue"])
    for answer in ("B", "(B)", "Answer: B", "green"):
        assert reward("choice", s, answer) == 1.0, answer
    for answer in ("A", "blue", "I think so"):
        assert reward("choice", s, answer) == 0.0, answer
    assert reward("choice", sample("green", choices=["red", "green"]), "B") == 1.0  # meta.choices, expected as text


def test_a_perfect_box_scores_1_everywhere():
    for name in ("grounding", "grounding_f1", "all_found", "format"):
        assert reward(name, ONE, box(0, 0, 100, 100)) == 1.0, name


def test_partial_overlap():
    # (0,0)-(100,100) vs (50,0)-(150,100): intersection 50*100, union 2*10000 - 5000, IoU 1/3 < 0.5
    assert reward("grounding", ONE, box(50, 0, 150, 100)) == pytest.approx(1 / 3)
    assert reward("grounding_f1", ONE, box(50, 0, 150, 100)) == 0.0
    assert reward("all_found", ONE, box(50, 0, 150, 100)) == 0.0
    # (0,0)-(100,80): IoU 0.8 >= 0.5, a true positive
    assert reward("grounding", ONE, box(0, 0, 100, 80)) == pytest.approx(0.8)
    assert reward("grounding_f1", ONE, box(0, 0, 100, 80)) == 1.0
    assert reward("all_found", ONE, box(0, 0, 100, 80)) == 1.0


def test_swapped_corners_score_as_unswapped():
    assert reward("grounding", ONE, box(150, 100, 50, 0)) == pytest.approx(1 / 3)
    assert reward("grounding", ONE, box(100, 100, 0, 0)) == 1.0
    assert reward("all_found", ONE, box(100, 0, 0, 100)) == 1.0


def test_many_boxes_do_not_pay():
    answer = box(0, 0, 100, 100) + "".join(box(500 + 40 * i, 500, 520 + 40 * i, 520) for i in range(9))
    assert reward("grounding", ONE, answer) == pytest.approx(0.1)  # 1 / max(1, 10)
    assert reward("grounding_f1", ONE, answer) == pytest.approx(2 / 11)  # 2 * 1 / (1 + 10)
    assert reward("all_found", ONE, answer) == 0.0
    assert reward("format", ONE, answer) == 1.0


def test_malformed_tags_count_as_predicted_and_fail_format():
    wrong_count = box(0, 0, 100, 100) + "<point_box> (1,2) </point_box>"  # a box with one coordinate
    assert reward("grounding", ONE, wrong_count) == pytest.approx(0.5)  # 1 / max(1, 1 + 1)
    assert reward("grounding_f1", ONE, wrong_count) == pytest.approx(2 / 3)  # 2 / (1 + 1 + 1)
    assert reward("all_found", ONE, wrong_count) == 0.0
    assert reward("format", ONE, wrong_count) == 0.0
    unclosed = "<point_box> (5,5) (9,9) " + box(0, 0, 100, 100)  # another tag opens before its closing tag
    assert reward("grounding", ONE, unclosed) == pytest.approx(0.5)
    assert reward("format", ONE, unclosed) == 0.0
    assert reward("grounding", ONE, "<point_box> (0,0) (100,100)") == 0.0  # never closed: nothing parsed


def test_no_box_in_the_answer_scores_0():
    for name in ("grounding", "grounding_f1", "all_found", "point", "format"):
        assert reward(name, ONE, "the cat is at the top left") == 0.0, name


def test_two_expected_boxes_matched_within_their_mentions():
    s = sample(box(0, 0, 100, 100, "cat") + " and " + box(200, 200, 400, 400, "dog"))
    both = box(200, 200, 400, 400, "dog") + box(0, 0, 100, 100, "cat")
    assert reward("grounding", s, both) == 1.0
    assert reward("all_found", s, both) == 1.0
    swapped = box(200, 200, 400, 400, "cat") + box(0, 0, 100, 100, "dog")  # right places, wrong names
    assert reward("grounding", s, swapped) == 0.0
    # cat perfect; dog (300,200)-(500,400) vs (200,200)-(400,400): 100*200 / (2*40000 - 20000) = 1/3
    half = box(0, 0, 100, 100, "cat") + box(300, 200, 500, 400, "dog")
    assert reward("grounding", s, half) == pytest.approx((1 + 1 / 3) / 2)
    assert reward("grounding_f1", s, half) == pytest.approx(0.5)  # 2 * 1 / (2 + 2)
    assert reward("all_found", s, half) == 0.0
    assert reward("grounding", s, box(0, 0, 100, 100, "cat")) == pytest.approx(0.5)  # dog missed


def test_point_in_box():
    assert reward("point", ONE, "<point> (50,50) </point>") == 1.0
    assert reward("point", ONE, "<point> (150,50) </point>") == 0.0
    assert reward("point", ONE, "<point> (50,50) </point> <point> (60,60) </point>") == pytest.approx(0.5)
    assert reward("point", ONE, "<point> (50,50) </point> <point> (1,2,3) </point>") == pytest.approx(0.5)
    assert reward("format", ONE, "<point> (50,50) </point>") == 1.0


def test_nothing_expected_rewards_emitting_nothing_and_auto_takes_exact():
    s = sample("There is no cat.", type="grounding")
    for name in ("grounding", "grounding_f1", "all_found", "point"):
        assert reward(name, s, "No cat here.") == 1.0, name
        assert reward(name, s, box(0, 0, 10, 10)) == 0.0, name
        assert reward(name, s, "<point> (5,5) </point>") == 0.0, name
    assert reward("auto", s, "there is no cat") == 1.0
    assert reward("auto", s, "No cat here.") == 0.0


def test_format():
    text = sample("Paris")
    assert reward("format", text, "Lyon") == 1.0  # format only: no tag needed, none malformed
    assert reward("format", text, "Paris <point> (1,2") == 0.0
    assert reward("format", ONE, "<polygon> (0,0) (100,0) (50,90) </polygon>") == 1.0
    assert reward("format", ONE, "<polygon> (0,0) (100,0) </polygon>") == 0.0  # a polygon needs 3 points


def test_auto_picks_per_sample():
    choice = sample("B", options=["red", "green"])
    text = sample("Paris")
    rewards = Rewards()
    assert rewards.names == ["auto"]
    # grounding: F1 at IoU 0.5, so IoU 1/3 (the `grounding` reward's value) earns nothing and IoU 0.8 a hit
    assert rewards.score(ONE, box(50, 0, 150, 100))[0] == 0.0
    assert rewards.score(ONE, box(0, 0, 100, 80))[0] == 1.0
    assert rewards.score(ONE, box(0, 0, 100, 80) + " " + box(300, 300, 400, 400))[0] == pytest.approx(2 / 3)
    assert rewards.score(choice, "green")[0] == 1.0  # choice: the option's text
    assert rewards.score(text, "paris.")[0] == 1.0  # exact
    assert rewards.score(text, "Paris is the capital")[0] == 0.0  # exact, not contains
    assert rewards.score(sample("Paris", metric="contains"), "Paris is the capital")[0] == 1.0


def test_weights_combine_rewards():
    total, values = Rewards(["grounding", "format"], [2.0, 0.5]).score(ONE, box(50, 0, 150, 100))
    assert values == pytest.approx([1 / 3, 1.0])
    assert total == pytest.approx(2 / 3 + 0.5)
    assert Rewards(["grounding", "format"]).score(ONE, box(50, 0, 150, 100))[0] == pytest.approx(4 / 3)


def test_user_reward_by_import_path():
    rewards = Rewards(["exact", f"{HERE}:my_reward", f"{HERE}:true_reward", "exact"])
    assert rewards.names == ["exact", "my_reward", "true_reward", "exact_2"]
    total, values = rewards.score(sample("Paris", scale=3.0), "Paris")
    assert values == pytest.approx([1.0, 3.01, 1.0, 1.0])  # 3 * 1 + 0.01 * one prompt message
    assert total == pytest.approx(6.01)
    assert not rewards.failures


def test_a_failing_reward_is_nan_counted_and_logged_once(caplog):
    rewards = Rewards(["exact", f"{HERE}:broken_reward", f"{HERE}:none_reward", f"{HERE}:inf_reward"],
                      [2.0, 1.0, 1.0, 1.0])
    with caplog.at_level(logging.WARNING, logger="isaac_train.objectives.rewards"):
        total, values = rewards.score(sample("Paris"), "Paris")
        rewards.score(sample("Paris"), "Lyon")
    assert total == 2.0  # the failed ones add nothing
    assert values[0] == 1.0 and all(math.isnan(v) for v in values[1:])
    assert rewards.failures == {"broken_reward": 2, "none_reward": 2, "inf_reward": 2}
    records = [r for r in caplog.records if "broken_reward" in r.getMessage()]
    assert len(records) == 1 and "objective.rewards" in records[0].getMessage()
    assert records[0].exc_info is not None and "boom" in str(records[0].exc_info[1])
    assert len(caplog.records) == 3  # one per failing reward
    total, values = Rewards([f"{HERE}:broken_reward"]).score(sample("Paris"), "Paris")
    assert total == 0.0 and math.isnan(values[0])  # none left: 0.0


def test_score_many():
    totals, per_reward = Rewards(["exact", "format"], [1.0, 0.5]).score_many(
        [sample("Paris"), sample("Paris")], ["Paris", "<point> (1,2"])
    assert totals == [1.5, 0.0]
    assert per_reward == [[1.0, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="2 samples for 1 completions"):
        Rewards().score_many([sample("a"), sample("b")], ["a"])


@pytest.mark.parametrize(("spec", "message"), [
    ("tests.objectives.no_such_module:f", "objective.rewards: cannot import module 'tests.objectives.no_such"),
    (f"{HERE}:missing", f"objective.rewards: module '{HERE}' has no 'missing'"),
    (f"{HERE}:NOT_CALLABLE", f"objective.rewards: '{HERE}:NOT_CALLABLE' is a int, not a function"),
    (":f", "objective.rewards: ':f' is not an import path"),
    ("exactly", "objective.rewards: unknown reward 'exactly'; the built-ins are auto, exact, contains, choice"),
])
def test_bad_reward_names_raise_naming_objective_rewards(spec, message):
    with pytest.raises(ConfigError, match=message):
        Rewards(["exact", spec])


def test_bad_weights_raise_naming_objective_reward_weights():
    with pytest.raises(ConfigError, match=r"objective.reward_weights: 1 weights for 2 rewards"):
        Rewards(["exact", "format"], [1.0])
    with pytest.raises(ConfigError, match="objective.reward_weights: nan is not a finite number"):
        Rewards(["exact"], [math.nan])
    with pytest.raises(ConfigError, match="objective.rewards: empty"):
        Rewards([])
