"""Training's own build steps: parameter groups, optimizer, learning-rate schedule, loaders (the model and the
processor come from isaac_train/factory.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from ..config.schema import Config
from ..data.loader import LoaderSpec, PackedLoader, SourceSpec
from ..processing.processor import IsaacProcessor

logger = logging.getLogger(__name__)


def count_parameters(model: nn.Module, trainable: bool = False) -> int:
    """Parameters of the whole model, also when sharded (FSDP DTensors report their global size; DeepSpeed
    ZeRO-3 partitions carry `ds_numel`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad or not trainable)


def param_groups(model: nn.Module, cfg: Config) -> list[dict]:
    """AdamW groups: (vision | projector | decoder) x (decay | no decay on norms and biases)."""
    o = cfg.optim
    lrs = {"vision": o.lr_vision if o.lr_vision is not None else o.lr / 10,
           "projector": o.lr_projector if o.lr_projector is not None else o.lr, "decoder": o.lr}
    groups: dict[tuple[str, bool], list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = ("vision" if "vision_embedding.0." in name else
                "projector" if "vision_embedding.1." in name or "vision_embedding.3." in name else "decoder")
        no_decay = param.ndim < 2 or "norm" in name or name.endswith(".bias")
        groups.setdefault((part, no_decay), []).append(param)
    return [{"params": params, "lr": lrs[part], "weight_decay": 0.0 if no_decay else o.weight_decay,
             "name": f"{part}{'_no_decay' if no_decay else ''}"} for (part, no_decay), params in sorted(groups.items())]


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("no trainable parameters: check model.train_decoder / train_vision / train_projector")
    return torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, foreach=True)


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of each group's base lr at optimizer step `step` (0-based): warmup, then the schedule."""
    o, total = cfg.optim, cfg.train.max_steps
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    decay_start = total - int(o.decay_fraction * total)  # wsd: warmup, stable, then linear decay
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, total - decay_start)
    return 1.0 - (1 - o.min_lr_ratio) * min(progress, 1.0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def loader_spec(cfg: Config, shards: list[str] | str, weights: list[float] | None, train: bool) -> LoaderSpec:
    d, t = cfg.data, cfg.train
    entries = list(shards) if isinstance(shards, (list, tuple)) else [shards]
    weights = weights or [1.0] * len(entries)
    sources = [SourceSpec(Path(str(s)).name or f"source{i}", str(s), w) for i, (s, w) in
               enumerate(zip(entries, weights, strict=True))]
    ob = cfg.objective
    prompts = ob.name == "grpo" and train  # grpo trains on prompts; its eval loss reads packed samples as sft's
    return LoaderSpec(
        sources=sources, seq_len=t.seq_len, rows_per_batch=ob.prompts_per_batch if prompts else d.rows_per_batch,
        max_patches_per_row=d.max_patches_per_row,
        pack_buffer=d.pack_buffer, seed=t.seed, shuffle=d.shuffle and train, shuffle_block=d.shuffle_block,
        epochs=None if train else 1, length_policy=d.length_policy, max_error_rate=d.max_error_rate,
        max_image_pixels=d.max_image_pixels, num_workers=d.num_workers,
        pairs=ob.name == "dpo", shared_pair_images=ob.vision_per_pair,
        prompts=prompts, completion_room=ob.max_new_tokens if prompts else 0,
    )


def build_loader(cfg: Config, processor: IsaacProcessor, shards, weights, train: bool, rank: int = 0,
                 world_size: int = 1) -> PackedLoader:
    return PackedLoader(loader_spec(cfg, shards, weights, train), processor, rank=rank, world_size=world_size)
