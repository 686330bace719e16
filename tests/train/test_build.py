"""Build steps: what trains (isaac_train/factory.py), parameter groups, schedules (train/build.py)."""

from __future__ import annotations

import math

import pytest

from isaac_train import factory
from isaac_train.model import IsaacForConditionalGeneration
from isaac_train.model.tiny import tiny_config
from isaac_train.train import build
from isaac_train.train.cli import compose_config


def _model():
    return IsaacForConditionalGeneration(tiny_config())


def test_vision_last_n_and_projector():
    cfg = compose_config(["model=tiny", "model.train_vision=last_n", "model.vision_last_n=1",
                          "model.train_decoder=frozen"])
    model = _model()
    factory.set_trainable(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("model.vision_embedding.") for n in trainable)
    assert any(".encoder.layers.1." in n for n in trainable) and not any(".encoder.layers.0." in n for n in trainable)
    assert "model.vision_embedding.1.weight" in trainable and "model.vision_embedding.3.weight" in trainable
    assert "model.vision_embedding.0.embeddings.patch_embedding.weight" not in trainable


def test_param_groups_split_learning_rates_and_decay():
    cfg = compose_config(["model=tiny", "model.train_vision=all", "optim.lr=1e-4", "optim.lr_vision=1e-6",
                          "optim.lr_projector=5e-5", "optim.weight_decay=0.1"])
    model = _model()
    factory.set_trainable(model, cfg)
    groups = {g["name"]: g for g in build.param_groups(model, cfg)}
    assert groups["vision"]["lr"] == 1e-6 and groups["projector"]["lr"] == 5e-5 and groups["decoder"]["lr"] == 1e-4
    assert groups["decoder_no_decay"]["weight_decay"] == 0.0 and groups["decoder"]["weight_decay"] == 0.1
    names = {id(p): n for n, p in model.named_parameters()}
    for p in groups["decoder_no_decay"]["params"]:
        assert p.ndim == 1 or "norm" in names[id(p)]
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules(schedule):
    cfg = compose_config(["model=tiny", f"optim.schedule={schedule}", "train.max_steps=100", "optim.warmup_steps=10",
                          "optim.min_lr_ratio=0.1", "optim.decay_fraction=0.2"])
    f = [build.lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup
    if schedule == "constant":
        assert f[50] == f[99] == 1.0
    elif schedule == "cosine":
        assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
        assert f[99] > 0.1 and all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    else:
        assert f[79] == 1.0 and f[80] == 1.0 and f[99] == pytest.approx(1 - 0.9 * 19 / 20)


def test_the_logged_lr_is_the_decoders(train_shards, tmp_path):
    """metrics.jsonl's lr is optim.lr as scheduled, not the last group's (vision here, 1000x smaller)."""
    import json

    from isaac_train.train import loop

    from .conftest import tiny_overrides

    out = tmp_path / "run"
    loop.train(compose_config(tiny_overrides(train_shards, out, "train.max_steps=2", "model.train_vision=all",
                                             "optim.lr=1e-3", "optim.lr_vision=1e-6", "optim.schedule=constant",
                                             "optim.warmup_steps=0")))
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert lrs == [1e-3, 1e-3]
