"""An evaluation from samples to predictions and summary, on one process or split over ranks.

    result = evaluate(model, processor, samples, env=env, batch_size=8)
    write_results(result, out_dir)      # predictions.jsonl, summary.json (rank 0)

`predict` answers this rank's share (generate.py) and gathers every rank's answers, so each sample is answered
exactly once; `score_rows` scores them (score.py). Under sharded weights (fsdp, zero3) pass `synced=True`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metrics.logger import write_predictions
from .generate import answers_on_rank, merge_answers
from .samples import EvalSample
from .score import metric_for, score, summarize


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)


def predict(model, processor, samples: list[EvalSample], env=None, synced: bool = False, **options: Any) -> list[str]:
    """Every sample's answer, in order, on every rank (`env`: a DistEnv; None for one process)."""
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    local = answers_on_rank(model, processor, samples, rank, world, synced=synced, **options)
    parts = env.gather(local) if env is not None else [local]
    return merge_answers(parts, len(samples))


def score_rows(samples: list[EvalSample], answers: list[str], metric: str = "auto") -> list[dict[str, Any]]:
    """One prediction row per sample: key, prompt, expected, generated, metric, scores, images, task."""
    rows = []
    for sample, generated in zip(samples, answers, strict=True):
        chosen = metric_for(sample, metric)
        rows.append({"key": sample.key, "prompt": sample.question, "expected": sample.expected,
                     "generated": generated, "metric": chosen, "scores": score(sample, generated, chosen),
                     "task": sample.task, "images": sample.image_refs})
    return rows


def evaluate(model, processor, samples: list[EvalSample], env=None, metric: str = "auto", synced: bool = False,
             **options: Any) -> EvalResult:
    """Answer, score and summarise `samples` (options: batch_size, max_new_tokens, do_sample, progress, ...)."""
    answers = predict(model, processor, samples, env=env, synced=synced, **options)
    rows = score_rows(samples, answers, metric)
    return EvalResult(rows, summarize(rows))


def write_results(result: EvalResult, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """predictions.jsonl and summary.json (with `extra`: what was evaluated, how) under `out_dir`."""
    out = Path(out_dir)
    write_predictions(out / "predictions.jsonl", result.rows)
    summary = {**(extra or {}), "skipped": result.skipped, **result.summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out
