"""Periodic evaluation during training: a failing evaluation is reported and counted and the run goes on; the
scored predictions land in eval/step_NNNNNNN.jsonl and metrics.jsonl, the W&B table carries the images."""

from __future__ import annotations

import json

import torch

from isaac_train.checkpoint.manager import CheckpointManager
from isaac_train.train import loop
from isaac_train.train.cli import compose_config

from .conftest import tiny_overrides


def _eval_run(train_shards, out, *extra):
    return compose_config(tiny_overrides(train_shards, out, f"data.eval_shards={train_shards}", "train.max_steps=4",
                                         "train.eval_every=2", "train.eval_batches=1", "train.eval_samples=2",
                                         "train.save_every=2", *extra))


def test_a_failing_evaluation_is_counted_and_training_goes_on(train_shards, tmp_path, monkeypatch, capfd):
    def broken(*_a, **_k):
        raise ValueError("input_ids hold 1 image tokens (id 498) but no pixel_values were given")

    monkeypatch.setattr(loop, "local_answers", broken)
    out = tmp_path / "run"
    result = loop.train(_eval_run(train_shards, out))
    assert result.state.step == 4 and result.state.eval_failures == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_failures"] for r in records if "eval_failures" in r] == [1, 2]
    assert max(r["step"] for r in records if "loss" in r) == 4
    printed = capfd.readouterr().out
    assert "step 2: evaluation failed (ValueError: input_ids hold 1 image tokens" in printed
    saved = CheckpointManager(out / "checkpoints").meta(CheckpointManager(out / "checkpoints").latest())
    assert saved["train_state"].eval_failures == 2  # counted across a resume too


def test_eval_table_has_the_expected_text_and_wandb_gets_the_images(train_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    loop.train(_eval_run(train_shards, out, "logging.wandb=offline"))
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step_0000002.jsonl", "step_0000004.jsonl"]
    rows = [json.loads(line) for line in (out / "eval" / "step_0000004.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["expected"], str) and r["expected"] for r in rows), rows
    assert not any(r["expected"].startswith("[{") for r in rows)
    assert all(r["metric"] == "exact" and set(r["scores"]) == {"exact_match", "contains"} for r in rows)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_samples"] == 2 for r in evals)
    assert all(0.0 <= r["eval/exact_match"] <= 1.0 for r in evals)
    pngs = list(out.rglob("media/images/*.png"))
    assert pngs, "the eval images are logged as PNGs in the offline run"
    tables = list(out.rglob("media/table/*.table.json"))
    assert tables and "eval_samples" in tables[0].name


def test_evaluation_of_a_model_that_favours_the_image_placeholder_runs(train_shards, tmp_path, monkeypatch):
    """The young model of the issue: its logits favour <|image_pad|> at every position. In-training evaluation
    (batched, real generation) answers without the placeholder and without failing."""
    from ..conftest import IMAGE_TOKEN

    real, outputs = loop.local_answers, []

    def favour(_module, _args, logits):
        return logits + 100.0 * (torch.arange(logits.shape[-1]) == IMAGE_TOKEN).to(logits.dtype)

    def favouring(model, processor, *args, **kwargs):
        hook = model.lm_head.register_forward_hook(favour)
        generate = model.generate

        def recording(**inputs):
            out = generate(**inputs)
            outputs.append(out[:, inputs["input_ids"].shape[1]:])
            return out

        model.generate = recording
        try:
            return real(model, processor, *args, **kwargs)
        finally:
            del model.generate
            hook.remove()

    monkeypatch.setattr(loop, "local_answers", favouring)
    out = tmp_path / "run"
    result = loop.train(_eval_run(train_shards, out, "train.eval_batch_size=2"))
    assert result.state.eval_failures == 0 and len(outputs) == 2  # one batch of 2 at steps 2 and 4
    assert all(o.shape[1] > 0 for o in outputs) and not any((o == IMAGE_TOKEN).any() for o in outputs)
    rows = [json.loads(line) for line in (out / "eval" / "step_0000004.jsonl").read_text().splitlines()]
    assert len(rows) == 2
