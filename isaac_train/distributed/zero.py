"""`strategy=zero1|zero2|zero3`: DeepSpeed ZeRO behind the same seam.

The DeepSpeed config is generated from our settings (`deepspeed_config`), checked before any process starts
(config/zero_options.py, with the schema), and never read from a separate JSON file: one source of truth.
Trainable weights stay fp32 (the master copy the optimizer steps); `train.precision=bf16` runs the forward under
autocast, as the other strategies do, and holds frozen weights in bf16 (DeepSpeed's own bf16 mode stays off: it
would also hold the trainable weights in bf16 and reduce their gradients in bf16; stages 1-2 never touch frozen
parameters, stage 3's frozen partitions are cast after the weights are scattered, `cast_partition`). The optimizer
is our torch AdamW with its parameter groups (passing an object avoids DeepSpeed building FusedAdam). For stage 3
the model is built inside `deepspeed.zero.Init`, so no rank ever holds more than its partition plus one module
(weights from `model.pretrained` are loaded the same way, through transformers' ZeRO-3 loading path).
Checkpoints are DeepSpeed's own files under `deepspeed/` (resume with the same number of processes);
`full_model()` gathers the weights onto rank 0 for export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.safe_load import deepspeed_loads
from .strategy import Strategy, unsupported_format

TAG = "deepspeed"


def deepspeed_config(stage: int, grad_accum: int, clip_grad_norm: float | None, world_size: int,
                     zero_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DeepSpeed config for our settings (strategy.zero holds extra zero_optimization keys)."""
    zero = {"stage": stage, **(zero_options or {})}
    return {
        "train_micro_batch_size_per_gpu": 1,  # one packed micro-batch per forward; tokens vary, rows do not
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": float(clip_grad_norm or 0.0),
        "zero_optimization": zero,
        "bf16": {"enabled": False},  # fp32 trainable weights; bf16 compute from autocast, frozen ones held in bf16
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def cast_partition(param) -> None:
    """One ZeRO-3 parameter to bf16: its partition (`ds_tensor`) and its placeholder, whose dtype the buffers of
    later all-gathers take (DeepSpeed all-gathers a module's partitions grouped by dtype, so bf16 frozen and fp32
    trainable parameters can share a module)."""
    if hasattr(param, "ds_tensor"):
        param.ds_tensor.data = param.ds_tensor.data.to(torch.bfloat16)
    param.data = param.data.to(torch.bfloat16)


class ZeroStrategy(Strategy):
    format = "deepspeed"

    def __init__(self, env, precision: str, stage: int, options: Any = None, grad_accum: int = 1,
                 clip_grad_norm: float | None = None) -> None:
        super().__init__(env, precision)
        self.stage = stage
        self.name = f"zero{stage}"
        self.engine = None
        self.micro_steps = 0
        self.grad_accum = grad_accum
        zero = dict(getattr(options, "zero", None) or {})
        self.config = deepspeed_config(stage, grad_accum, clip_grad_norm, env.world_size, zero)
        self._hf_config = None  # kept alive: transformers' ZeRO-3 loading looks it up while building

    @property
    def eval_on_all_ranks(self) -> bool:
        return self.stage == 3 and self.env.world_size > 1

    @property
    def eval_model(self) -> nn.Module:
        return self.engine.module

    def build_partitioned(self, make_model) -> nn.Module:
        """Stage 3: every rank builds the model inside zero.Init (each parameter partitioned as it is created,
        nothing initialised); rank 0 builds the real model on CPU (seeded init or `model.pretrained`) and its
        weights are scattered into the partitions one parameter at a time."""
        import deepspeed
        import torch.distributed as dist
        from transformers.integrations import HfDeepSpeedConfig

        reference = make_model("cpu").state_dict() if self.env.is_main else None
        # transformers sees ZeRO-3 through this object (generate() then keeps all ranks stepping together)
        self._hf_config = HfDeepSpeedConfig(self.config)
        with deepspeed.zero.Init(config_dict_or_path=self.config):
            model = make_model("cpu", weights=False)
        for name, param in model.named_parameters():
            if hasattr(param, "ds_id"):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    if self.env.is_main:
                        param.data.copy_(reference[name])
            else:
                if self.env.is_main:
                    param.data.copy_(reference[name])
                dist.broadcast(param.data, src=0)
        del reference
        from ..precision import frozen_dtype, hold_frozen_in_bf16

        if frozen_dtype(self.precision) == torch.bfloat16:
            hold_frozen_in_bf16(model, cast=cast_partition)  # as make_model does for the other strategies
        return model

    def setup(self, make_model, make_optimizer, make_scheduler) -> None:
        import deepspeed

        self.make_model = make_model
        deepspeed.init_distributed(dist_backend="nccl" if self.env.device.type == "cuda" else "gloo")  # our group
        if self.stage == 3:
            model = self.build_partitioned(make_model)
        else:
            model = make_model("cpu")
        optimizer = make_optimizer(model)
        self.scheduler = make_scheduler(optimizer)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                  config=self.config)
        self.model = self.engine

    def frozen_copy(self, make_frozen) -> nn.Module:
        """Stage 3: partitioned like the policy, in a DeepSpeed engine of its own without an optimizer (its hooks
        gather each layer for the forward); stages 1 and 2 shard only optimizer state: a whole copy per rank."""
        if self.stage != 3:
            return super().frozen_copy(make_frozen)
        import deepspeed

        config = {k: v for k, v in self.config.items() if k not in ("optimizer", "scheduler")}
        engine, *_ = deepspeed.initialize(model=self.build_partitioned(make_frozen), config=config)
        engine.module.eval()
        return engine.module

    def backward(self, loss) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop already divides by the global label count
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            self.engine.step()  # not a boundary: DeepSpeed only counts the micro-step

    def clip(self, max_norm: float | None) -> None:
        return None  # DeepSpeed clips inside its step (gradient_clipping)

    def update(self, norm: float | None, loss_finite: bool = True) -> tuple[float, bool]:
        return self.step(None, loss_finite)

    def step(self, max_norm: float | None, loss_finite: bool = True) -> tuple[float, bool]:
        """DeepSpeed's boundary step: reduce, clip (gradient_clipping), update, zero gradients. Its ZeRO
        optimizers skip the update themselves when the global gradient norm is not finite (fp32 and bf16 too:
        compute_grad_norm), leaving weights and Adam state as they were; then our schedule does not move either.
        A NaN loss makes the gradients NaN (its backward multiplies by it), so the loss needs no check of its own."""
        self.engine.step()
        applied = bool(self.engine.was_step_applied())
        if applied:
            self.scheduler.step()
        norm = self.engine.get_global_grad_norm()
        return (float(norm) if norm is not None else float("nan")), applied

    def local_weights(self) -> list[torch.Tensor]:
        """This rank's fp32 master partitions: what the ZeRO optimizer steps and checkpoints, and what the module's
        weights are gathered from after each step (stages 1-2: `single_partition_of_fp32_groups`, stage 3:
        `fp32_partitioned_groups_flat`; on the host with optimizer offload). Where DeepSpeed names them otherwise,
        each trainable parameter's own partition (`ds_tensor` under stage 3)."""
        zero = self.engine.optimizer
        for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
            parts = getattr(zero, name, None)
            if parts:
                return [t.detach() for t in parts]
        return [getattr(p, "ds_tensor", p).detach() for p in self.trainable()]

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=TAG, save_latest=False)
        self.save_scheduler(directory)

    def load(self, directory: Path, meta: dict[str, Any]) -> None:
        fmt = meta.get("format")
        if fmt != "deepspeed":
            raise ValueError(unsupported_format(directory, fmt, self.name))
        if meta.get("world_size") not in (None, self.env.world_size):
            raise ValueError(
                f"checkpoint {directory} was written by {meta['world_size']} processes with DeepSpeed; ZeRO "
                f"partitions resume on the same number ({self.env.world_size} now). Start "
                f"{meta['world_size']} processes, or export the checkpoint and start a new run from it.")
        with deepspeed_loads(directory / TAG):
            path, _ = self.engine.load_checkpoint(str(directory), tag=TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"DeepSpeed found no checkpoint under {directory / TAG}")
        self.load_scheduler(directory)

    def full_model(self) -> nn.Module | None:
        module = self.engine.module
        if self.stage < 3:
            return module if self.env.is_main else None
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.detach().clone().cpu() for k, v in module.state_dict().items()} if self.env.is_main else None
        if not self.env.is_main:
            return None
        self._hf_config = None  # the copy for export is an ordinary model: transformers must not see ZeRO-3 now
        return self.unsharded(state)
