"""The training loop: golden losses, gradient accumulation, frozen weights, exact resume after kill -9,
SIGTERM checkpoint-and-requeue, refusal to resume a changed configuration."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from isaac_train.checkpoint.manager import CheckpointManager
from isaac_train.data.packing import build_batch, item_from_sample
from isaac_train.dist_env import DistEnv
from isaac_train.distributed.strategy import LocalStrategy
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import REQUEUE_EXIT_CODE, train

from ..data_helpers import chat_sample, make_pair_shards
from ..distributed.helpers import run_train
from .conftest import losses, run_cli, tiny_overrides

# First losses of the tiny run (tiny_overrides, 4 steps), pinned when the loop was written: any change to the
# model, the processor, the data order, packing, the loss or the optimizer moves them.
GOLDEN_LOSSES = {1: 6.271409659550108, 2: 6.172123500279018, 3: 6.042899854255445, 4: 5.862384765625}


def test_golden_losses(train_shards, tmp_path):
    result = train(compose_config(tiny_overrides(train_shards, tmp_path / "run", "train.max_steps=4")))
    got = losses(result.run_dir)
    for step, expected in GOLDEN_LOSSES.items():
        assert got[step] == pytest.approx(expected, abs=1e-5), (step, got)


def _rows(processor, n_rows: int = 8):
    import numpy as np

    from isaac_train.data.decode import encode_members

    rng = np.random.default_rng(5)
    rows = []
    for r in range(n_rows):
        row = []
        for k in range(1 + r % 3):  # rows of 1-3 samples: unequal token counts
            sample, images = chat_sample(100 * r + k, rng)
            members = {"json": json.dumps(sample).encode(), **dict(images)}
            enc = encode_members(members, processor, 256, normalize_pixels=False)
            row.append(item_from_sample(enc, None, f"r{r}k{k}"))
        rows.append(row)
    return rows


def test_gradient_accumulation_1x8_equals_4x2(tiny_model, tiny_processor):
    strategy = LocalStrategy(DistEnv(), "fp32", "single")
    strategy.model = tiny_model
    rows = _rows(tiny_processor)
    one = [build_batch(rows, 768, 486)]
    four = [build_batch(rows[i : i + 2], 768, 486) for i in range(0, 8, 2)]
    assert len({b.num_label_tokens for b in four}) > 1, "micro-batches must have unequal label counts"
    tiny_model.train()
    grads = []
    for micro in (one, four):
        tiny_model.zero_grad()
        total = sum(b.num_label_tokens for b in micro)
        for batch in micro:
            strategy.forward_backward(batch.model_inputs(), 1 / total)
        grads.append({n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=0, msg=name)


def test_frozen_weights_stay_bit_identical_with_lora(train_shards, tmp_path):
    cfg = compose_config(tiny_overrides(train_shards, tmp_path / "run", "peft=lora", "model.train_decoder=lora",
                                        "train.max_steps=3"))
    result = train(cfg)
    before = train(compose_config(tiny_overrides(train_shards, tmp_path / "zero", "peft=lora",
                                                 "model.train_decoder=lora", "train.max_steps=1",
                                                 "optim.lr=1e-12", "optim.warmup_steps=0")))
    after = load_file(result.checkpoint / "model.safetensors")
    initial = load_file(before.checkpoint / "model.safetensors")
    frozen = [k for k in after if "lora_" not in k and "vision_embedding.1" not in k and "vision_embedding.3" not in k]
    trained = [k for k in after if "lora_B" in k or "vision_embedding.1" in k]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(after[k], initial[k]), k
    assert any(not torch.equal(after[k], initial[k]) for k in trained)


GRPO = ["objective=grpo", "objective.num_generations=3", "objective.max_new_tokens=8", "objective.num_iterations=2",
        "objective.beta=0.05", "objective.prompts_per_batch=2", "model.train_vision=all"]


@pytest.mark.parametrize("mode", ["full", "lora", "dpo", "grpo"])
def test_kill_9_and_resume_gives_bit_identical_weights(train_shards, tmp_path, mode):
    """dpo: full fine-tuning on pairs, its frozen reference copy rebuilt from the starting weights on resume.
    grpo: sampled rollouts (temperature 1) each optimised twice (num_iterations=2), so the checkpoint of step 3 is
    taken between a rollout's two passes and must hold it; the KL term's frozen copy rebuilt on resume; the vision
    tower trains too."""
    extra = {"full": [], "lora": ["peft=lora", "model.train_decoder=lora", "peft.dropout=0.1"],
             "dpo": ["objective=dpo", f"data.train_shards={make_pair_shards(tmp_path / 'pairs', 40)}"],
             "grpo": GRPO}[mode]
    straight = tmp_path / "straight"
    run_train(tiny_overrides(train_shards, straight, *extra))  # in this process, one thread, as the CLI runs
    interrupted = tmp_path / "interrupted"
    args = tiny_overrides(train_shards, interrupted, "train.save_every=3", *extra)
    assert run_cli(args, kill_after_step=5) == -signal.SIGKILL
    assert CheckpointManager(interrupted / "checkpoints").latest() is not None
    run_train(args)  # the resume, from what the killed process left on disk
    a = load_file(straight / "checkpoints" / "latest" / "model.safetensors")
    b = load_file(interrupted / "checkpoints" / "latest" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(straight) == losses(interrupted)
    if mode == "grpo":  # the same rollouts, each step's once (the killed run's later ones cut back)
        rollouts = [sorted((run / "rollouts").glob("step_*.jsonl")) for run in (straight, interrupted)]
        assert [p.name for p in rollouts[0]] == [p.name for p in rollouts[1]] == [
            f"step_{s:07d}.jsonl" for s in (1, 3, 5, 7)]
        assert all(x.read_text() == y.read_text() for x, y in zip(*rollouts, strict=True))


def test_sigterm_checkpoints_and_exits_for_requeue(train_shards, tmp_path):
    out = tmp_path / "run"
    args = tiny_overrides(train_shards, out, "train.max_steps=40")
    assert run_cli(args, kill_after_step=2, sig=signal.SIGTERM) == REQUEUE_EXIT_CODE
    latest = CheckpointManager(out / "checkpoints").latest()
    assert latest is not None and 2 <= int(latest.name.split("_")[1]) < 40


def test_resume_with_changed_data_is_refused(train_shards, tmp_path):
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(train_shards, out, "train.max_steps=3")))
    with pytest.raises(ValueError, match="seq_len"):
        train(compose_config(tiny_overrides(train_shards, out, "train.max_steps=6", "train.seq_len=512")))
    more = train(compose_config(tiny_overrides(train_shards, out, "train.max_steps=5")))  # extending is fine
    assert more.state.step == 5


def test_wandb_offline_and_metrics_file(train_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    result = train(compose_config(tiny_overrides(train_shards, out, "logging.wandb=offline", "train.max_steps=3")))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "images_per_s", "packing_efficiency",
                "data_wait_s", "skipped", "memory_gb"):
        assert key in records[-1], key
    assert result.state.step == 3
    assert any((out / "wandb").rglob("*.wandb")), "an offline W&B run was written"


def test_keep_last_and_latest_only_name_complete_checkpoints(train_shards, tmp_path):
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(train_shards, out, "train.max_steps=5", "train.save_every=1",
                                        "train.keep_last=2")))
    manager = CheckpointManager(out / "checkpoints")
    assert [p.name for p in manager.complete()] == ["step_0000004", "step_0000005"]
    assert (out / "checkpoints" / "latest").resolve().name == "step_0000005"
    assert not list((out / "checkpoints").glob(".tmp_*"))
    # a half-written checkpoint (no COMPLETE marker) is never picked up
    broken = out / "checkpoints" / "step_0000009"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    assert manager.latest().name == "step_0000005"
