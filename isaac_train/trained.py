"""Read a training checkpoint of any strategy back into one process, whatever number of processes wrote it: what
isaac-export exports and isaac-eval evaluates (both import it from here, below them; the model comes from the
factory, isaac_train/factory.py, as in training).

    load_trained("/runs/a")                          # the run's latest checkpoint
    load_trained("/runs/a/checkpoints/step_0001000")

The run's `config.yaml` (next to `checkpoints/`) says how to rebuild the model (size or `model.pretrained`, what
trained, LoRA); the checkpoint's `format` says how its weights are stored:
    full       model.safetensors (single, ddp)
    dcp        torch.distributed.checkpoint shards (fsdp), read without a process group
    deepspeed  ZeRO partitions (zero1-3), consolidated to fp32 with DeepSpeed's zero_to_fp32
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from .checkpoint.safe_load import deepspeed_loads, load_dcp_state, load_state_file
from .config.schema import Config, validate


@dataclass
class TrainedRun:
    """A checkpoint loaded for export or evaluation: the model as trained (peft-wrapped under LoRA, fp32, CPU)."""

    cfg: Config
    checkpoint: Path
    meta: dict[str, Any]
    model: nn.Module
    processor: Any


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory, its checkpoints/ directory or `latest` -> the newest checkpoint there that verifies
    (newer ones that do not, a missing COMPLETE marker included, are logged and skipped); a step directory ->
    itself, if it verifies. The rules are the trainer's (integrity.verify: every file listed, none missing from
    what the format needs, sizes and sha256)."""
    from .checkpoint.integrity import verify
    from .checkpoint.manager import CheckpointManager

    path = Path(path)
    if path.name == "latest" and path.is_symlink():
        path = path.parent
    for root in (path, path / "checkpoints"):
        manager = CheckpointManager(root)
        if manager.candidates():
            latest = manager.latest()
            if latest is None:
                raise ValueError(f"no checkpoint under {root} verifies: " + "; ".join(
                    f"{p.name}: {reason}" for p, reason in manager.skipped()))
            return latest.resolve()
    if (path / "trainer_state.json").is_file() or (path / "COMPLETE").is_file():
        reason = verify(path)
        if reason is not None:
            raise ValueError(f"checkpoint {path} cannot be used: {reason}. Export another step (checkpoints/step_N)")
        return path.resolve()
    raise FileNotFoundError(f"no checkpoint at {path}: give a run directory (run.output_dir), its checkpoints/ "
                            "directory or a checkpoints/step_NNNNNNN directory")


def run_config(checkpoint: Path) -> Config:
    """The resolved training config saved with the run (run.output_dir/config.yaml)."""
    file = checkpoint.parent.parent / "config.yaml"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the checkpoint must sit in its run directory "
                                "(run.output_dir/checkpoints/step_N) next to the config.yaml the trainer wrote")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(file)))
    validate(cfg)
    return cfg


def read_weights(model: nn.Module, checkpoint: Path, fmt: str) -> None:
    """Fill `model` (built on the meta device, structure as trained) with the checkpoint's weights, strictly."""
    if fmt == "full":
        from safetensors.torch import load_file

        state = load_file(checkpoint / "model.safetensors")
    elif fmt == "dcp":
        # buffers to read into, the model itself stays on meta until they are assigned (one copy, not two)
        state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
        load_dcp_state({"model": state}, checkpoint / "dcp", no_dist=True)
    elif fmt == "deepspeed":
        try:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        except ImportError as err:
            raise ImportError("this checkpoint was written by DeepSpeed: pip install 'isaac-train[deepspeed]' to "
                              "read it") from err
        with deepspeed_loads(checkpoint / "deepspeed"):
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="deepspeed")
            _add_frozen_from_module_states(state, checkpoint / "deepspeed", model)
    else:
        raise ValueError(f"checkpoint {checkpoint} has an unknown format {fmt!r} (expected full, dcp or deepspeed)")
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"checkpoint {checkpoint} ({fmt}) does not match the run's model: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {extra[:5]} ({len(extra)})")
    for key, value in state.items():  # to fp32 one tensor at a time: each bf16 buffer goes as its fp32 copy comes
        if value.is_floating_point() and value.dtype != torch.float32:
            state[key] = value.float()
    model.load_state_dict(state, strict=True, assign=True)


def _add_frozen_from_module_states(state: dict[str, torch.Tensor], directory: Path, model: nn.Module) -> None:
    """zero_to_fp32 leaves out frozen parameters of stage-1 checkpoints (LoRA's base weights); stages 1-2 keep
    whole, unpartitioned copies of every parameter in mp_rank_00_model_states.pt: take the missing ones there."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in shapes if k not in state]
    files = sorted(directory.glob("mp_rank_*_model_states.pt"))
    if not missing or not files:
        return
    module = load_state_file(files[0]).get("module", {})
    for key in missing:
        if key in module and module[key].shape == shapes[key]:
            state[key] = module[key]


def load_trained(path: str | Path) -> TrainedRun:
    """The checkpoint at `path` (see resolve_checkpoint) as a model in this process."""
    from . import factory

    checkpoint = resolve_checkpoint(path)
    meta = json.loads((checkpoint / "trainer_state.json").read_text())
    cfg = run_config(checkpoint)
    # the structure as trained, without the training-only switches
    cfg.model = dataclasses.replace(cfg.model, compile=False, activation_checkpointing=False)
    model_config = factory.model_config(cfg)
    model = factory.model_factory(cfg, model_config)("meta")
    read_weights(model, checkpoint, meta.get("format", "full"))
    model.eval()
    return TrainedRun(cfg, checkpoint, meta, model, factory.build_processor(cfg, model_config))
