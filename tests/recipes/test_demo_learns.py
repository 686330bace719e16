"""The README's main job: the default demo run learns to read the images (slow: ~5 minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest

from isaac_train.demo import CHANCE, main


@pytest.mark.slow
def test_demo_learns_above_chance(tmp_path):
    assert main([f"run.output_dir={tmp_path}", "logging.progress=false"]) == 0
    accuracy = json.loads((tmp_path / "demo_accuracy.json").read_text())
    assert accuracy["colour"] >= 2 * CHANCE["colour"], accuracy  # colour: 4 choices
    assert accuracy["count"] > CHANCE["count"], accuracy
    for path in ("hf/config.json", "hf/model.safetensors", "checkpoints/latest/COMPLETE", "metrics.jsonl"):
        assert (tmp_path / path).exists(), path
