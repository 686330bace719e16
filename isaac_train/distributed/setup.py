"""Process-group setup and teardown under torchrun (the DistEnv it returns, with the collectives the loop needs,
is isaac_train/dist_env.py).

Teardown follows docs measured on gloo (shared/platform_notes.md): heavy imports happen before the group starts;
at the end every rank passes a barrier, destroys the group, flushes its output and leaves with os._exit, which
avoids the 'terminate called without an active exception' abort some ranks hit at interpreter shutdown.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from ..dist_env import DistEnv


def init_distributed(strategy: str, timeout_s: int = 1800) -> DistEnv:
    """Start the process group from torchrun's environment; refuse a strategy that does not fit it."""
    if strategy.startswith("zero"):
        import deepspeed  # noqa: F401  heavy imports before the process group starts (platform_notes.md)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 and strategy == "single":
        raise ValueError(f"strategy=single but torchrun started {world} processes; use strategy=ddp")
    if world == 1:
        if strategy in ("fsdp", "zero1", "zero2", "zero3") and not dist.is_initialized():
            # FSDP2 and DeepSpeed want a process group even for one process: a private one-rank group (and
            # DeepSpeed reads torchrun's variables)
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
            dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timedelta(seconds=timeout_s))
        return DistEnv(device=device)
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A collective that waits longer than the timeout fails with a named error instead of hanging forever.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown_and_exit(env: DistEnv, code: int) -> None:
    """End a torchrun rank cleanly (see the module docstring); returns only when not distributed."""
    if not env.distributed:
        if dist.is_initialized():  # the one-rank group of fsdp / zero* in a single process
            dist.destroy_process_group()
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
