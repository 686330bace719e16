"""DistEnv: this process's rank, the world size, its device and the few collectives the loop, the checkpoint
manager and the strategies need. A room of its own at the bottom (tests/unit/test_layers.py), so that checkpoint/
can take one without importing distributed/ (which sits above it); the process group itself is started in
distributed/setup.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, value: float) -> float:
        """Sum of a number over ranks (float64 on the wire)."""
        return self.sum_many([value])[0]

    def sum_many(self, values: list[float]) -> list[float]:
        """Sums of several numbers over ranks in one collective (float64 on the wire)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks, left where it is and not read: a collective queued on the device (NCCL) or run
        on the host (gloo, CPU tensors)."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        return self.sum(float(flag)) > 0

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out
