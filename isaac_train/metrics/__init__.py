"""Metrics of a run: the logger (metrics.jsonl, W&B, progress), throughput and MFU, plots (plots/*.png)."""
