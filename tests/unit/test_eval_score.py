"""Evaluation bookkeeping: which metric a sample takes, the summary's counts and intervals, eval samples read from
shards and chat JSONL (skips counted), groundings drawn on their image."""

from __future__ import annotations

import io
import json

import numpy as np
import PIL.Image
import pytest

from isaac_train.data.shards import ShardWriter
from isaac_train.eval.draw import EXPECTED, GENERATED, draw_grounding
from isaac_train.eval.run import score_rows
from isaac_train.eval.samples import EvalSample, read_eval_samples
from isaac_train.eval.score import format_summary, headline, metric_for, summarize, wilson_interval

from ..data_helpers import encode_image

BOX = '<point_box mention="cat"> (100,100) (500,500) </point_box>'


def _sample(expected: str, **meta) -> EvalSample:
    return EvalSample("k", [{"role": "user", "content": "q"}], expected, [], meta)


def test_metric_choice():
    assert metric_for(_sample("yes")) == "exact"
    assert metric_for(_sample(BOX)) == "grounding"
    assert metric_for(_sample("B", options=["red", "blue"])) == "choice"
    assert metric_for(_sample("yes", metric="contains")) == "contains"
    assert metric_for(_sample(BOX), "exact") == "exact"  # the flag wins
    with pytest.raises(ValueError, match="choose one of"):
        metric_for(_sample("yes"), "bleu")


def test_summary_counts_intervals_and_tasks():
    samples = [_sample("red", task="colour"), _sample("Red.", task="colour"), _sample("two", task="count"),
               _sample(BOX, task="find"), _sample("B", options=["red", "blue"], task="mc")]
    answers = ["red", "blue", "there are two", '<point_box mention="cat"> (110,100) (500,520) </point_box> '
               '<point_box mention="cat"> (0,0) (10,10) </point_box>', "(B)"]
    rows = score_rows(samples, answers)
    summary = summarize(rows)
    assert summary["samples"] == 5
    # exact match over the 3 text samples: "red" right, "blue" wrong, "there are two" wrong (contains: right)
    assert summary["exact_match"]["successes"] == 1 and summary["exact_match"]["n"] == 3
    assert summary["contains"]["successes"] == 2
    assert summary["exact_match"]["ci95"] == pytest.approx(list(wilson_interval(1, 3)))
    g = summary["grounding"]
    assert g["precision@0.5"]["successes"] == 1 and g["precision@0.5"]["n"] == 2  # 2 predicted, 1 matches
    assert g["recall@0.5"]["value"] == 1.0 and g["f1@0.5"] == pytest.approx(2 / 3)
    iou = (390 * 400) / (400 * 400 + 390 * 420 - 390 * 400)
    assert g["mean_iou"] == pytest.approx(iou)
    assert summary["multiple_choice"]["value"] == 1.0
    assert summary["by_task"]["colour"]["exact_match"]["successes"] == 1
    assert set(summary["by_task"]) == {"colour", "count", "find", "mc"}
    flat = headline(summary)
    assert flat["eval/exact_match"] == pytest.approx(1 / 3) and flat["eval/recall@0.5"] == 1.0
    text = format_summary(summary)
    assert "exact_match:  33.3%  (1/3, 95% CI" in text and "task colour (2 samples)" in text


def test_malformed_grounding_is_counted_not_fatal():
    rows = score_rows([_sample(BOX)], ['<point_box mention="cat"> (1,2) </point_box> <point_box (3,4)'])
    summary = summarize(rows)["grounding"]
    assert summary["malformed"] == 2 and summary["precision@0.5"]["n"] == 0 and summary["recall@0.5"]["value"] == 0


def _shards(tmp_path):
    writer = ShardWriter(tmp_path / "shards", max_count=10)
    writer.write("a", {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
                                    {"role": "assistant", "content": [{"type": "text", "text": "A."}]}],
                       "meta": {"type": "colour"}}, [("0.png", encode_image(16, 16, 0))])
    writer.write("b", {"segments": [{"type": "text", "text": "a document"}]})
    writer.write("c", {"messages": [{"role": "user", "content": "no answer"}]})
    writer.write("d", {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})
    writer.close()
    return tmp_path / "shards"


def test_eval_samples_from_shards(tmp_path):
    data = read_eval_samples(_shards(tmp_path))
    assert [s.key for s in data.samples] == ["a", "d"]
    assert dict(data.skipped) == {"document": 1, "no_final_answer": 1}
    a = data.samples[0]
    assert a.expected == "A." and a.question == "Q?" and a.task == "colour" and len(a.images) == 1
    assert a.image_refs[0].endswith("#a.0.png")
    assert [s.key for s in read_eval_samples(_shards(tmp_path / "again"), limit=1).samples] == ["a"]


def test_eval_samples_from_chat_jsonl(tmp_path):
    (tmp_path / "img.png").write_bytes(encode_image(20, 30, 1))
    lines = [{"id": "x", "messages": [{"role": "user", "content": "<image>What colour?"},
                                      {"role": "assistant", "content": "red"}], "images": ["img.png"]},
             {"messages": [{"role": "user", "content": "<image>gone?"}, {"role": "assistant", "content": "no"}],
              "images": ["missing.png"]},
             "not json"]
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    data = read_eval_samples(path)
    assert [s.key for s in data.samples] == ["x"] and data.samples[0].expected == "red"
    assert len(data.samples[0].images) == 1 and data.samples[0].image_refs == ["img.png"]
    assert data.skipped["bad_json"] == 1 and sum(data.skipped.values()) == 2


def test_groundings_are_drawn_where_they_point():
    image = PIL.Image.new("RGB", (200, 100), (255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    drawn = np.asarray(draw_grounding(buf.getvalue(), BOX, '<point_box> (600,200) (900,800) </point_box>'))
    assert tuple(drawn[10, 20]) == EXPECTED  # the expected box's top-left corner: (100, 100) of 1000 -> (20, 10)
    assert tuple(drawn[20, 120]) == GENERATED  # the generated one: (600, 200) -> (120, 20)
    assert tuple(drawn[35, 60]) == (255, 255, 255)  # inside the expected box (20,10)-(100,50): outline only
    plain = np.asarray(draw_grounding(buf.getvalue(), "red", "blue"))
    assert (plain == 255).all()
