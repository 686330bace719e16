"""Evaluation during training: loss on the eval shards, and the task metrics of generated answers.

Each rank does its part (the loop's `_local_eval`: `eval_loss` on rank 0, or on every rank when the weights are
sharded; `local_answers`, its share of `train.eval_samples` answered in batches), then one gather brings every
rank's `LocalEval` (answers, failure) together and rank 0 scores them (`scored_rows`, `table_rows`). A failure is
never fatal: the loop reports and counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.loader import PackedLoader
from ..eval.draw import draw_grounding
from ..eval.generate import answers_on_rank, merge_answers
from ..eval.run import score_rows
from ..eval.samples import EvalSample, read_eval_samples
from ..eval.score import summarize


def eval_loss(model: torch.nn.Module, loader: PackedLoader, max_batches: int, device: torch.device) -> float:
    """Mean next-token loss over the label tokens of the first `max_batches` eval batches."""
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        out = model(**batch.to(device).model_inputs(), return_logits=False)
        total += float(out.loss_sum)
        count += int(out.num_label_tokens)
    return total / max(count, 1)


@dataclass
class LocalEval:
    """What one rank computed and sends to the others: the loss (None where it was not computed), its answers by
    sample index, a failure's one-line description."""

    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's held-out metrics (dpo)
    answers: dict[int, str] = field(default_factory=dict)
    failure: str | None = None


def local_answers(model, processor, shards: Any, n: int, rank: int, world: int, synced: bool, batch_size: int,
                  max_new_tokens: int) -> tuple[list[EvalSample], dict[int, str]]:
    """The first `n` eval samples (the same list on every rank) and this rank's share of their answers."""
    samples = read_eval_samples(shards, n).samples if n else []
    answers = answers_on_rank(model, processor, samples, rank, world, synced=synced, batch_size=batch_size,
                              max_new_tokens=max_new_tokens)
    return samples, answers


def scored_rows(samples: list[EvalSample], parts: list[dict[int, str]]) -> tuple[list[dict], dict[str, Any]]:
    """Every rank's answers merged (each sample once), scored, summarised."""
    rows = score_rows(samples, merge_answers(parts, len(samples)))
    return rows, summarize(rows)


def table_rows(samples: list[EvalSample], rows: list[dict]) -> list[dict]:
    """Rows for the W&B table: the answer, its main score, and the first image with the groundings drawn."""
    out = []
    for sample, row in zip(samples, rows, strict=True):
        main = next((row["scores"][k] for k in ("exact_match", "multiple_choice", "all_found", "contains")
                     if k in row["scores"]), None)
        image = draw_grounding(sample.images[0], sample.expected, row["generated"]) if sample.images else None
        out.append({"key": row["key"], "question": row["prompt"], "expected": row["expected"],
                    "generated": row["generated"], "metric": row["metric"], "score": main, "image": image})
    return out


def rollout_table_rows(rows: list[dict], images: list[bytes | None]) -> list[dict]:
    """A GRPO step's rollout rows (one per prompt; `images` each prompt's first image) as W&B table rows, one per
    completion, the completion's groundings drawn beside the expected ones."""
    out = []
    for row, image in zip(rows, images, strict=False):
        for k, text in enumerate(row["completions"]):
            out.append({"key": f"{row['key']}#{k}", "question": row["prompt"], "expected": row["expected"],
                        "generated": text, "reward": row["rewards"][k], "advantage": row["advantages"][k],
                        "image": draw_grounding(image, row["expected"], text) if image is not None else None})
    return out
