"""Hugging Face export of training checkpoints: `export_checkpoint` (any strategy's checkpoint, one process),
`export_model` (a model in memory, what the trainer calls with run.export=true), and `isaac-export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .reader import TrainedRun, load_trained, resolve_checkpoint
from .writer import ExportSummary, ExportVerificationError, export_model


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, log=print, **options: Any) -> ExportSummary:
    """Export the checkpoint at `checkpoint` (a run directory, checkpoints/, or a step directory) to `out_dir`.
    Options as export_model: layout, dtype, lora, max_shard_size, verify, overwrite."""
    run = load_trained(checkpoint)
    log(f"export: read {run.checkpoint} ({run.meta.get('format', 'full')} format, strategy "
        f"{run.meta.get('strategy', 'single')}, {run.meta.get('world_size', 1)} process(es), step "
        f"{run.meta['train_state']['step']})")
    return export_model(run.model, run.processor, out_dir, cfg=run.cfg, log=log, **options)


__all__ = ["ExportSummary", "ExportVerificationError", "TrainedRun", "export_checkpoint", "export_model",
           "load_trained", "resolve_checkpoint"]
