"""Reading checkpoint files without running code from them.

A pickle can name any importable callable and have it called while loading (`__reduce__`): a checkpoint
copied from elsewhere, or altered on a shared disk, could run anything as the training user. Everything we read
back goes through one of these:

- `load_state_file(path)`: torch files (optimizer, scheduler, per-rank RNG and data state) with
  `torch.load(weights_only=True)`: tensors, numbers, strings and plain containers only.
- `restricted_unpickle(file, allowed)`: raw pickles (DCP's `.metadata`) with an unpickler that resolves only the
  listed classes.
- `weights_only_loads()`: a context in which every `torch.load` (also inside DeepSpeed and DCP) loads
  weights-only, with the few extra classes those files need allowed by name.
- `load_dcp_state(state, dir)`: `dcp.load` with DCP's `.metadata` (a plain pickle torch reads unrestricted)
  through the restricted unpickler, before and during the load, and the rest weights-only.
- `deepspeed_loads(dir)`: every torch file of a DeepSpeed checkpoint scanned for the classes it names (only
  DeepSpeed's loss scaler, ZeRO stage enum and fragment address are allowed), then loaded weights-only.

A refused file raises `UnsafeCheckpointError` naming it; nothing from it has run.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint file refers to Python code we do not load; it was refused before anything ran."""


def _refusal(path: Path | str, reason: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing to load {path}: {reason}. isaac-train checkpoints hold only tensors and plain data, so this "
        "file was altered or written by something else; nothing from it was run. Restore the file, or remove "
        "this checkpoint directory to resume from an earlier one.")


def load_state_file(path: Path | str, map_location: str = "cpu") -> Any:
    """A torch.save'd state (optimizer, scheduler, RNG, data position), tensors and plain containers only."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        raise _refusal(path, first[0] if first else "it references Python objects") from None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed: set[tuple[str, str]], where: str) -> None:
        super().__init__(file)
        self.allowed, self.where = allowed, where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise _refusal(self.where, f"it references {module}.{name}, which a checkpoint never needs")
        return super().find_class(module, name)


def restricted_unpickle(file, allowed: Iterable[tuple[str, str]], where: str) -> Any:
    """Unpickle `file`, resolving only the (module, name) pairs in `allowed`."""
    return _RestrictedUnpickler(file, set(allowed), where).load()


def restricted_unpickle_bytes(data: bytes, allowed: Iterable[tuple[str, str]], where: str) -> Any:
    return restricted_unpickle(io.BytesIO(data), allowed, where)


def _dcp_globals() -> set[tuple[str, str]]:
    """What DCP's `.metadata` pickle names: its own metadata classes, torch sizes, dtypes and layouts, paths."""
    import torch.distributed.checkpoint.metadata as metadata

    allowed = {("torch.distributed.checkpoint.metadata", name) for name, value in vars(metadata).items()
               if isinstance(value, type) or name.startswith("_MEM_FORMAT")}
    allowed |= {("torch", name) for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
    allowed |= {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                ("pathlib", "PurePosixPath"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                ("collections", "OrderedDict")}
    return allowed


def check_dcp(directory: Path | str) -> None:
    """Refuse a DCP checkpoint whose `.metadata` names anything but DCP's own metadata classes."""
    path = Path(directory) / ".metadata"
    with open(path, "rb") as f:
        restricted_unpickle(f, _dcp_globals(), str(path))


def load_dcp_state(state: dict[str, Any], directory: Path | str, no_dist: bool = False) -> None:
    """`dcp.load(state, ...)` from `directory` without running code: `.metadata` checked first (a refusal inside
    DCP would only say "metadata is None"), then read restricted, the data files and entries weights-only."""
    import torch.distributed.checkpoint as dcp

    check_dcp(directory)
    with weights_only_loads():
        dcp.load(state, storage_reader=dcp_reader(directory), no_dist=no_dist)


def dcp_reader(directory: Path | str):
    """A FileSystemReader that reads `.metadata` through the restricted unpickler (use inside weights_only_loads,
    which covers the data files and the non-tensor entries)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class RestrictedReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                metadata = restricted_unpickle(f, _dcp_globals(), str(path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return RestrictedReader(str(directory))


def _deepspeed_globals() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def deepspeed_loads(directory: Path | str) -> Iterator[None]:
    """Inside: DeepSpeed reads its checkpoint under `directory` weights-only; each file was first scanned for the
    classes it names, and one naming anything beyond DeepSpeed's few state classes is refused by name."""
    allowed = _deepspeed_globals()
    with torch.serialization.safe_globals(allowed):
        for path in sorted(Path(directory).rglob("*.pt")):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            if unsafe:
                raise _refusal(path, f"it references {', '.join(unsafe[:3])}")
    with weights_only_loads(allowed):
        yield


@contextlib.contextmanager
def weights_only_loads(extra_globals: Iterable[Any] = ()) -> Iterator[None]:
    """Inside: every torch.load loads weights-only, also where a library passes weights_only=False (torch reads
    TORCH_FORCE_WEIGHTS_ONLY_LOAD on every call), with `extra_globals` allowed by name."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            yield
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        raise _refusal("a checkpoint file", first[0] if first else "it references Python objects") from None
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
