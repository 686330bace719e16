"""Grounding data in and grounding quality out: a COCO fixture the test writes converts with
`isaac-data make-shards --format coco`, trains a few steps with periodic evaluation, and `isaac-eval` scores the
trained run with the grounding metrics."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image

from data_tools import cli
from isaac_train.eval.cli import main as isaac_eval
from isaac_train.train import loop
from isaac_train.train.cli import compose_config

from ..train.conftest import tiny_overrides


def _coco(root, n=10):
    """n images, each with 1-2 coloured rectangles of category square (1) or bar (2)."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n):
        w, h = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        pixels = np.full((h, w, 3), 255, dtype=np.uint8)
        for k in range(1 + i % 2):
            bw, bh = int(rng.integers(6, w // 2)), int(rng.integers(6, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            pixels[y:y + bh, x:x + bw] = (200, 0, 0) if k == 0 else (0, 0, 200)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1 + k,
                                "bbox": [x, y, bw, bh], "iscrowd": 0, "area": bw * bh})
        PIL.Image.fromarray(pixels).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]}))
    return path


def test_coco_converts_trains_and_evaluates(tmp_path):
    (tmp_path / "coco").mkdir()
    instances = _coco(tmp_path / "coco")
    shards = tmp_path / "shards"
    assert cli.main(["make-shards", "--format", "coco", str(instances), str(shards), "--workers", "1"]) == 0
    run = tmp_path / "run"
    loop.train(compose_config(tiny_overrides(shards, run, "train.max_steps=4", f"data.eval_shards={shards}",
                                             "train.eval_every=4", "train.eval_batches=1", "train.eval_samples=4",
                                             "train.eval_max_new_tokens=12")))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = next(r for r in records if "eval_loss" in r)
    assert evaluated["eval_samples"] == 4 and 0.0 <= evaluated["eval/recall@0.5"] <= 1.0
    rows = [json.loads(line) for line in (run / "eval" / "step_0000004.jsonl").read_text().splitlines()]
    assert all(r["metric"] == "grounding" and r["task"] == "detection" for r in rows)

    assert isaac_eval([str(run), str(shards), str(tmp_path / "eval"), "--max-new-tokens", "12"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    # 10 images: 5 with one square, 5 with a square and a bar -> 15 (image, category) samples, 15 boxes
    assert summary["samples"] == 15 and summary["grounding"]["recall@0.5"]["n"] == 15
    assert set(summary["by_task"]) == {"detection"}
    assert {"precision@0.5", "f1@0.5", "mean_iou", "malformed"} <= set(summary["grounding"])
