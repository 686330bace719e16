"""How the model is spread over processes: one seam, and the plain implementation (single process, DDP).

The training loop sees only this interface, whichever `strategy=` runs:

    strategy.setup(make_model, make_optimizer, make_scheduler)  build, wrap, shard
    strategy.forward_backward(inputs, loss_scale) -> output      one micro-batch (autocast, backward)
    strategy.step(max_norm, loss_finite) -> (norm, applied)     clip, optimizer step, schedule, zero grads;
                                                                 nothing changes when loss or norm is not finite
        = strategy.clip(max_norm) -> norm on the device (or None) then strategy.update(norm, loss_finite): the loop
          reads the norm together with its own numbers, in the step's one read from the device
    strategy.nonfinite_weights() -> 0-d tensor on the device      1.0 when a trainable weight this rank holds (its
                                                                 shard, its partition) is not finite; not read
    strategy.save(dir) / strategy.load(dir, meta)                every rank; the format is the strategy's
    strategy.full_model() -> nn.Module | None                    an unsharded model on rank 0 (export)
    strategy.eval_model, strategy.eval_on_all_ranks              what evaluation runs on, and where

Checkpoint formats (named in trainer_state.json as `format`):
    full       model.safetensors + optimizer.pt (optimizer state keyed by parameter name), rank 0 writes
    dcp        dcp/ : torch.distributed.checkpoint shards of model + optimizer (any world size can load it)
    deepspeed  deepspeed/ : DeepSpeed's own files (ZeRO partitions; the same world size resumes them)
scheduler.pt (the learning-rate schedule) is written by rank 0 in every format.

`make_model(device)` builds the model with what trains already set (LoRA applied) and, under
`train.precision=bf16`, its frozen weights held in bf16 (isaac_train/precision.py; trainable ones stay fp32);
`device="meta"` asks for the structure only (sharded strategies fill the weights from rank 0 or a checkpoint).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.safe_load import load_dcp_state, load_state_file
from ..dist_env import DistEnv

ModelFactory = Callable[[torch.device | str], nn.Module]
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

SHARDED = ("fsdp", "zero1", "zero2", "zero3")


class Strategy:
    """Base: the loop-facing interface. Subclasses fill in setup / save / load / full_model."""

    name = "base"
    format = "full"

    def __init__(self, env: DistEnv, precision: str) -> None:
        self.env = env
        self.precision = precision
        self.model: nn.Module | None = None  # what the forward runs on (wrapped)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.make_model: ModelFactory | None = None  # kept by sharded strategies to rebuild a whole model

    # ---- building --------------------------------------------------------------------------------------------

    def setup(self, make_model: ModelFactory, make_optimizer: OptimizerFactory,
              make_scheduler: SchedulerFactory) -> None:
        raise NotImplementedError

    @property
    def eval_on_all_ranks(self) -> bool:
        """True when the weights are sharded: every rank must take part in every forward (eval included)."""
        return False

    @property
    def eval_model(self) -> nn.Module:
        return self.model

    # ---- one step ----------------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        device = self.env.device
        if self.precision == "bf16":
            if device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cpu":
                return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward_backward(self, inputs: dict[str, Any], loss_scale: float | torch.Tensor,
                         loss_of: Callable[[Any], torch.Tensor] | None = None) -> Any:
        """Forward one micro-batch and backpropagate `loss_sum * loss_scale` (a number, or a 0-d tensor on the
        device so that the host never waits for the global label count). With more than one process every
        rank runs the vision tower (a blank image when its batch has none), so all ranks run the same
        collectives and every trainable parameter has a gradient. `loss_of(output)`: the objective's loss sum
        (objectives/), else the token loss; the output's `loss_sum` is then the one backpropagated."""
        with self.autocast():
            out = self.model(**inputs, return_logits=False, keep_vision_graph=self.env.distributed)
            if loss_of is not None:
                out.loss_sum = loss_of(out)
        self.backward(out.loss_sum * loss_scale)
        return out

    def forward_frozen(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        """A forward without gradients (a reference model, `model` as `frozen_copy` made it or the policy itself),
        with the same autocast and the same collectives on every rank as a training forward."""
        with torch.no_grad(), self.autocast():
            return model(**inputs, return_logits=False, keep_vision_graph=self.env.distributed)

    def frozen_copy(self, make_frozen: Callable[[torch.device | str], nn.Module]) -> nn.Module:
        """A second model that never trains (a preference objective's reference), placed as this strategy places
        the policy: here a whole copy on the device; sharded under fsdp / zero3 (the sharded strategies)."""
        return make_frozen(self.env.device).eval()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def step(self, max_norm: float | None, loss_finite: bool = True) -> tuple[float, bool]:
        """Clip to `max_norm` (None: only measure), step the optimizer and the schedule, clear gradients; unless
        the loss (summed over ranks) or the gradient norm is not finite: then the gradients are dropped and the
        parameters, the optimizer state and the schedule stay as they were. Every rank sees the same norm (the
        gradients are reduced, or the norm is), so all ranks decide alike. Returns (norm before clipping,
        whether the update was applied)."""
        norm = self.clip(max_norm)
        return self.update(None if norm is None else float(norm), loss_finite)

    def clip(self, max_norm: float | None) -> torch.Tensor | None:
        """Clip the gradients to `max_norm` (None: only measure); the norm before clipping as a 0-d tensor on the
        device, not read. None where the strategy's own step clips (ZeRO)."""
        norm = torch.nn.utils.clip_grad_norm_(self.trainable(), max_norm or float("inf"))
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        return norm

    def update(self, norm: float | None, loss_finite: bool = True) -> tuple[float, bool]:
        """After `clip`: step the optimizer and the schedule unless the loss or `norm` (as read) is not finite,
        then clear the gradients. Returns (norm, applied). A trainable weight the step gave no gradient (in one
        process, a step without images leaves the vision tower and the projector none) steps with a zero one, as
        under data parallelism, where every rank runs the vision tower: AdamW moves it by its momentum alike, and a
        run's updates do not depend on how many processes share its batch."""
        applied = loss_finite and norm is not None and math.isfinite(norm)
        if applied:
            for p in self.trainable():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, applied

    def local_weights(self) -> list[torch.Tensor]:
        """The trainable weights as this rank holds them (every rank the whole model here; shards or partitions in
        the sharded strategies), for `nonfinite_weights`."""
        return [p.detach() for p in self.trainable()]

    def nonfinite_weights(self) -> torch.Tensor:
        """1.0 (a 0-d float64 tensor on the device, not read) when some trainable weight this rank holds is not
        finite, else 0.0. Sum it over ranks (the loop folds it into its next read) to decide alike everywhere."""
        return nonfinite_flag(self.local_weights(), self.env.device)

    def lr(self) -> float:
        """The decoder's learning rate (optim.lr as scheduled; the first group when no decoder parameter trains).
        Groups are sorted decoder < projector < vision, each scheduled by the same factor."""
        lrs = self.scheduler.get_last_lr()
        names = [g.get("name", "") for g in self.scheduler.optimizer.param_groups]
        return next((lr for lr, name in zip(lrs, names, strict=False) if name.startswith("decoder")), lrs[0])

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def save_scheduler(self, directory: Path) -> None:
        if self.env.is_main:
            torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load_scheduler(self, directory: Path) -> None:
        self.scheduler.load_state_dict(load_state_file(directory / "scheduler.pt"))

    def full_model(self) -> nn.Module | None:
        """The whole model on rank 0 (None on the others); every rank must call it."""
        raise NotImplementedError

    def unsharded(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A plain model (structure from make_model, on meta) holding the gathered full `state`."""
        model = self.make_model("meta")
        model.load_state_dict(state, strict=True, assign=True)
        return model


class LocalStrategy(Strategy):
    """`single` (one process) and `ddp` (every rank holds the whole model; gradients all-reduced)."""

    format = "full"

    def __init__(self, env: DistEnv, precision: str, name: str) -> None:
        super().__init__(env, precision)
        self.name = name
        self.plain: nn.Module | None = None

    def setup(self, make_model, make_optimizer, make_scheduler) -> None:
        self.plain = make_model(self.env.device)
        self.optimizer = make_optimizer(self.plain)
        self.scheduler = make_scheduler(self.optimizer)
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # keep_vision_graph=True in forward_backward: every parameter takes part in every step
            self.model = DistributedDataParallel(self.plain)
        else:
            self.model = self.plain

    @property
    def eval_model(self) -> nn.Module:
        return self.plain

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if self.env.is_main:
            state = {k: v.detach().contiguous().cpu() for k, v in self.plain.state_dict().items()}
            save_file(state, directory / "model.safetensors")
            torch.save(get_optimizer_state_dict(self.plain, self.optimizer), directory / "optimizer.pt")
        self.save_scheduler(directory)

    def load(self, directory: Path, meta: dict[str, Any]) -> None:
        fmt = meta.get("format", "full")
        if fmt == "full":
            model_state, optim_state = read_full_checkpoint(directory)
            set_states(self.plain, self.optimizer, model_state, optim_state, directory)
        elif fmt == "dcp":
            load_dcp(self.plain, self.optimizer, directory)
        else:
            raise ValueError(unsupported_format(directory, fmt, self.name))
        self.load_scheduler(directory)

    def full_model(self) -> nn.Module | None:
        return self.plain if self.env.is_main else None


def nonfinite_flag(tensors: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """1.0 when some element of `tensors` is inf or NaN, else 0.0: a 0-d float64 tensor on `device`, not read.
    Exact and one pass over the memory: extremes are finite exactly when every element is, and never overflow on
    large finite weights (a sum of squares in float32 would, past a norm of 1.8e19). On accelerators the inf norm
    (max-abs) of every tensor in one fused kernel per device (torch._foreach_norm; NaN propagates, on CUDA through
    max_propagate_nan); on the host each tensor's min and max (aminmax, vectorised: 2.4 GB/s on one core of the
    2-core CI machine against 0.4-0.55 GB/s for torch's CPU inf norm, 64 x 4 MiB fp32). Empty shards have no
    extremes and are left out. Cost: docs/performance.md (benchmarks/weights_check.py)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel():
            by_device.setdefault(t.device, []).append(t)
    bad = torch.zeros((), dtype=torch.float64, device=device)
    for where, group in by_device.items():
        if where.type == "cpu":
            ends = torch.stack([end.float() for t in group for end in torch.aminmax(t)])
        else:
            ends = torch.stack(torch._foreach_norm(group, float("inf"), dtype=torch.float32))
        bad = torch.maximum(bad, (~torch.isfinite(ends).all()).to(device=device, dtype=torch.float64))
    return bad


# ---- shared checkpoint helpers -----------------------------------------------------------------------------------


def read_full_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors"), load_state_file(directory / "optimizer.pt")


def set_states(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
               where: Path, full: bool = False) -> None:
    """Load a model and an optimizer state keyed by parameter names (full tensors when `full`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=full, strict=True)
    try:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options)
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {where} does not fit the model being trained (model.*, peft.* or what "
                         f"trains changed?): {str(err)[:800]}") from err


def load_dcp(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Load a `dcp` checkpoint into `model`/`optimizer` however they are sharded now (or not at all)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    load_dcp_state(state, directory / "dcp")
    set_states(model, optimizer, state["model"], state["optimizer"], directory)


def unsupported_format(directory: Path, fmt: str, strategy: str) -> str:
    hint = {"deepspeed": "resume it with the strategy that wrote it (zero1/zero2/zero3, same number of processes)"}
    return (f"checkpoint {directory} is in the '{fmt}' format, which strategy={strategy} cannot resume: "
            f"{hint.get(fmt, 'resume it with the strategy that wrote it')}, or export it to a Hugging Face directory")


def make_strategy(options: Any, env: DistEnv, train: Any) -> Strategy:
    """The Strategy for `strategy=` (options: the StrategyConfig; train: the TrainConfig, for precision and,
    with DeepSpeed, grad_accum and clip_grad_norm, which its config carries)."""
    name, precision = options.name, train.precision
    if name in ("single", "ddp"):
        return LocalStrategy(env, precision, name)
    if name == "fsdp":
        from .fsdp import FSDPStrategy

        return FSDPStrategy(env, precision, options)
    if name in ("zero1", "zero2", "zero3"):
        from .zero import ZeroStrategy

        return ZeroStrategy(env, precision, int(name[-1]), options, train.grad_accum, train.clip_grad_norm)
    raise ValueError(f"strategy={name!r}: choose single, ddp, fsdp, zero1, zero2 or zero3")
