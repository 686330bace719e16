"""`strategy=fsdp`: FSDP2 (`fully_shard`) with one unit per decoder layer, one per vision block, and the root.

Built without materialising the model on every rank: rank 0 builds it (initialised from `train.seed` or loaded
from `model.pretrained`), the other ranks build the structure on the meta device; after sharding, rank 0's
weights are broadcast into each rank's shards. Mixed precision: bf16 compute with fp32 gradient reduction when
`train.precision=bf16`, fp32 throughout otherwise. With bf16, frozen weights are held (sharded) in bf16 beside
fp32 trainable ones in the same unit (a LoRA decoder layer holds both): FSDP2 asks for one dtype among a unit's
trainable parameters only (`FSDPParamGroup._init_mp_dtypes`), and with param_dtype bf16 every all-gather input is
bf16 anyway. Checkpoints are sharded `torch.distributed.checkpoint` files
(`dcp` format) that any number of processes can load, this strategy or a single process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model import isaac_of
from .strategy import (
    Strategy,
    load_dcp,
    read_full_checkpoint,
    set_states,
    unsupported_format,
)


def shard_units(isaac: nn.Module) -> list[nn.Module]:
    """The modules that become their own FSDP unit: every decoder layer and every vision encoder block."""
    return [*isaac.model.vision_embedding[0].encoder.layers, *isaac.model.layers]


class FSDPStrategy(Strategy):
    name = "fsdp"
    format = "dcp"

    def __init__(self, env, precision: str, options: Any = None) -> None:
        super().__init__(env, precision)
        self.reshard_after_forward = getattr(options, "reshard_after_forward", True)

    @property
    def eval_on_all_ranks(self) -> bool:
        return self.env.world_size > 1

    def setup(self, make_model, make_optimizer, make_scheduler) -> None:
        self.make_model = make_model
        self.model = self.sharded(make_model)
        self.optimizer = make_optimizer(self.model)
        self.scheduler = make_scheduler(self.optimizer)

    def frozen_copy(self, make_frozen) -> nn.Module:
        """Sharded as the policy is (same units, same mixed precision): each rank holds 1/world of it."""
        return self.sharded(make_frozen).eval()

    def sharded(self, make_model) -> nn.Module:
        """Build on rank 0 (the structure elsewhere), shard, and broadcast rank 0's weights into the shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_model_state_dict,
        )
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        device = self.env.device
        model = make_model("cpu" if self.env.is_main else "meta")
        full_state = get_model_state_dict(model) if self.env.is_main else {}
        mesh = torch.distributed.device_mesh.init_device_mesh(device.type, (self.env.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if self.precision == "bf16" else None,
                                      reduce_dtype=torch.float32)
        isaac = isaac_of(model)
        for unit in shard_units(isaac):
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        # The root unit is the Isaac model itself (under peft too): generate() and the peft wrapper both enter it.
        fully_shard(isaac, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        model.to_empty(device=device)
        set_model_state_dict(model, full_state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True))
        del full_state
        return model

    def local_weights(self) -> list[torch.Tensor]:
        """This rank's shards of the trainable weights (FSDP2 holds each parameter as a DTensor sharded on dim 0;
        its local tensor is what the optimizer steps here). Summed over ranks, the flag covers every element once."""
        return [p.to_local().detach() if hasattr(p, "to_local") else p.detach() for p in self.trainable()]

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory / "dcp"))
        self.save_scheduler(directory)

    def load(self, directory: Path, meta: dict[str, Any]) -> None:
        fmt = meta.get("format", "full")
        if fmt == "dcp":
            load_dcp(self.model, self.optimizer, directory)
        elif fmt == "full":  # a single-process / DDP checkpoint: every rank reads the whole file, keeps its shard
            model_state, optim_state = read_full_checkpoint(directory)
            set_states(self.model, self.optimizer, model_state, optim_state, directory, full=True)
        else:
            raise ValueError(unsupported_format(directory, fmt, self.name))
        self.load_scheduler(directory)

    def full_model(self) -> nn.Module | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.unsharded(state) if self.env.is_main else None


__all__ = ["FSDPStrategy", "shard_units"]
