"""At most one device-to-host read per optimizer step when the step does not log, evaluate or save.

A read is anything that makes the host wait for the device on a GPU: `.item()` / `bool()` / `int()` / `float()`
of a tensor, `.tolist()`, `.numpy()`, `nonzero()`, boolean indexing, `masked_select`, `unique`, `equal`, ...
On this CPU machine every tensor is a host tensor, so the test makes the difference visible: `PackedBatch.to`
copies the batch (as a real host-to-device copy would), the batches as the loader yields them are registered as
host tensors, and a read counts unless every tensor it reads is one of those. Reads are counted per step, between
the loop's heartbeats (`Watchdog.beat`, called as each step starts). The data loader's own work (it runs in
worker processes on real runs) is not counted, nor is the inside of `optimizer.step`: torch's AdamW keeps its
step counters on the host (`.item()` of those reads host memory) and runs its updates without a read.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from isaac_train.data import loader as loader_module
from isaac_train.data.packing import PackedBatch
from isaac_train.distributed import watchdog as watchdog_module
from isaac_train.train.cli import compose_config
from isaac_train.train.loop import train

from .conftest import tiny_overrides

aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
         aten.unique_dim.default, aten.unique_consecutive.default, aten.equal.default, aten.is_nonzero.default,
         aten.repeat_interleave.Tensor}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)


def _caller() -> str:
    """The innermost frame in the project's code (or the test) that made the read."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "isaac_train" in frame.filename or "benchmarks" in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "?"


class ReadCounter(TorchDispatchMode):
    """Counts device-to-host reads per step (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.host: set[int] = set()
        self.steps: list[list[str]] = []
        self.paused = 0
        self.kept: list[list[torch.Tensor]] = []

    def register_host(self, batch: PackedBatch) -> None:
        found = [v for v in batch.__dict__.values() if isinstance(v, torch.Tensor)]
        if batch.layout is not None:
            found += [t for t in (batch.layout.label_index, batch.layout.label_targets) if t is not None]
        self.host |= {t.untyped_storage().data_ptr() for t in found}
        # Held for the counter's life: a freed host tensor's address would be reused by a later tensor (the step's
        # read, on a CPU run), which would then pass for a host tensor and go uncounted.
        self.kept.append(found)

    def is_host(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() in self.host

    def read(self, what: str, tensors) -> None:
        if self.paused or not self.steps:
            return
        if not all(self.is_host(t) for t in tensors):
            self.steps[-1].append(f"{what} at {_caller()}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.read(str(func), list(_tensors(args)))
        elif func in INDEXING:
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
                self.read(f"{func} with a boolean index", list(_tensors(args)))
        return func(*args, **(kwargs or {}))


def _summary(steps: list[list[str]]) -> str:
    counts: dict[str, int] = {}
    for reads in steps:
        for read in reads:
            counts[read] = counts.get(read, 0) + 1
    return f"reads per step {[len(r) for r in steps]}: " + "; ".join(f"{n}x {r}" for r, n in sorted(counts.items()))


@pytest.fixture
def counter(monkeypatch):
    counter = ReadCounter()
    for name in ("tolist", "numpy", "__array__"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name, **k):
            counter.read(f"Tensor.{_name}", [self])
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)

    def to_device(self, device):  # a real copy, as host-to-device is
        fields = {k: (v.clone() if isinstance(v, torch.Tensor) and k not in ("cu_seqlens", "image_grid_hw") else v)
                  for k, v in self.__dict__.items()}
        return PackedBatch(**fields)

    monkeypatch.setattr(PackedBatch, "to", to_device)

    def pause(*_):
        counter.paused += 1

    def resume(*_):
        counter.paused -= 1

    hooks = [register_optimizer_step_pre_hook(pause),
             register_optimizer_step_post_hook(resume)]
    original_iter = loader_module.PackedLoader.__iter__

    def host_batches(self):
        batches = original_iter(self)
        while True:
            counter.paused += 1
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                counter.paused -= 1
            counter.register_host(batch)
            yield batch

    monkeypatch.setattr(loader_module.PackedLoader, "__iter__", host_batches)
    original_beat = watchdog_module.Watchdog.beat

    def beat(self, step):
        counter.steps.append([])
        return original_beat(self, step)

    monkeypatch.setattr(watchdog_module.Watchdog, "beat", beat)
    yield counter
    for hook in hooks:
        hook.remove()


def _train(train_shards, tmp_path, counter, *extra):
    cfg = compose_config(tiny_overrides(train_shards, tmp_path / "run", "train.max_steps=4", "train.log_every=100",
                                        "train.grad_accum=2", *extra))
    with counter:
        train(cfg)
    return counter.steps[:3]  # steps 1-3 neither log nor save (step 4 is the last: it logs, saves, exports)


@pytest.mark.parametrize("strategy", ["single", "fsdp"])
def test_one_read_per_step(train_shards, tmp_path, counter, strategy):
    steps = _train(train_shards, tmp_path, counter, f"strategy={strategy}")
    assert [len(reads) for reads in steps] == [1, 1, 1], _summary(steps)


def test_the_count_sees_an_extra_read(train_shards, tmp_path, counter, monkeypatch):
    """The check can fail: a loop that reads the loss of each micro-batch (as it once did) is caught."""
    from isaac_train.distributed.strategy import LocalStrategy

    original = LocalStrategy.forward_backward

    def reading(self, inputs, scale):
        out = original(self, inputs, scale)
        float(out.loss_sum.detach())
        return out

    monkeypatch.setattr(LocalStrategy, "forward_backward", reading)
    steps = _train(train_shards, tmp_path, counter)
    assert [len(reads) for reads in steps] == [3, 3, 3], _summary(steps)
