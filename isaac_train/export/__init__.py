"""Hugging Face export of training checkpoints: `export_checkpoint` (any strategy's checkpoint, one process),
`export_model` (a model in memory, what the trainer calls with run.export=true), and `isaac-export`.

The names below are imported on first use (PEP 562): `isaac-export --help` must not wait for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lazy import lazy_getattr

if TYPE_CHECKING:
    from ..trained import TrainedRun, load_trained, resolve_checkpoint
    from .writer import ExportSummary, ExportVerificationError, export_model

# reading a run back lives below export/ and eval/ (isaac_train/trained.py); export keeps offering its names
_LAZY = {"TrainedRun": "..trained", "load_trained": "..trained", "resolve_checkpoint": "..trained",
         "ExportSummary": ".writer", "ExportVerificationError": ".writer", "export_model": ".writer"}


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, log=print, **options: Any) -> ExportSummary:
    """Export the checkpoint at `checkpoint` (a run directory, checkpoints/, or a step directory) to `out_dir`.
    Options as export_model: layout, dtype, lora, max_shard_size, verify, overwrite."""
    from ..trained import load_trained
    from .writer import export_model

    run = load_trained(checkpoint)
    log(f"export: read {run.checkpoint} ({run.meta.get('format', 'full')} format, strategy "
        f"{run.meta.get('strategy', 'single')}, {run.meta.get('world_size', 1)} process(es), step "
        f"{run.meta['train_state']['step']})")
    return export_model(run.model, run.processor, out_dir, cfg=run.cfg, log=log, **options)


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["ExportSummary", "ExportVerificationError", "TrainedRun", "export_checkpoint", "export_model",
           "load_trained", "resolve_checkpoint"]
