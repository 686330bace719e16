"""A packed rollout micro-batch as plain containers and tensors, so that a checkpoint can hold the rollout a GRPO step
is still optimising (objective.num_iterations > 1) and a resume continues it exactly. Checkpoints load with
weights_only (checkpoint/safe_load.py): dataclasses are taken apart here and rebuilt, never pickled."""

from __future__ import annotations

from typing import Any

from ..data.packing import PackedBatch
from ..model.packed import PackedLayout

_TENSORS = ("input_ids", "labels", "position_ids", "cu_seqlens", "pixel_values", "image_grid_hw")
_LAYOUT = ("cu_seqlens", "image_grids", "image_tokens", "label_index", "label_targets", "image_order",
           "label_groups", "group_tokens")


def batch_state(batch: PackedBatch) -> dict[str, Any]:
    layout = batch.layout
    state = {name: getattr(batch, name) for name in _TENSORS}
    state["sample_keys"] = [list(row) for row in batch.sample_keys]
    state["meta"] = {k: v for k, v in batch.meta.items() if k in ("padding", "grpo")}
    state["layout"] = {name: getattr(layout, name) for name in _LAYOUT}
    state["layout"]["image_grids"] = [list(g) for g in layout.image_grids]
    state["layout"]["padding"] = sorted(layout.padding)
    return state


def batch_from_state(state: dict[str, Any]) -> PackedBatch:
    fields = dict(state["layout"])
    fields["padding"] = frozenset(fields["padding"])
    fields["image_grids"] = [tuple(g) for g in fields["image_grids"]]
    meta = dict(state["meta"])
    if "grpo" in meta:
        meta["grpo"] = dict(meta["grpo"])
    return PackedBatch(**{name: state[name] for name in _TENSORS}, sample_keys=state["sample_keys"], meta=meta,
                       layout=PackedLayout(**fields))
