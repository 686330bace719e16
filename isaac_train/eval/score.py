"""Scoring generated answers and summarising them: which metric a sample takes, its scores, the summary.

Metric per sample (`metric="auto"`): the sample's `meta.metric` when it names one; else `grounding` when the
expected answer holds grounding tags (or `meta.type` is "grounding"); else `choice` when the sample carries
`meta.options` (or `meta.choices`); else `exact` (exact match, with `contains` reported beside it). A flag
(`metric="exact"|"contains"|"choice"|"grounding"`) puts every sample on one metric.

Summary: for each rate, the successes, the count and a 95% Wilson interval; grounding gives precision, recall
and F1 at IoU 0.5 (micro-averaged over boxes, intervals on TP / predicted and TP / expected), mean IoU, point
accuracy and the number of malformed tags. The same per task (`meta.task` or `meta.type`) when samples carry one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ..processing.grounding import parse_grounding
from .metrics import contains, exact_match, grounding, grounding_summary, multiple_choice, wilson_interval

if TYPE_CHECKING:
    from .samples import EvalSample

METRICS = ("auto", "exact", "contains", "choice", "grounding")
GROUNDING_COUNTS = ("expected_boxes", "predicted_boxes", "true_positives", "iou_sum", "predicted_points",
                    "point_hits", "malformed")


def metric_for(sample: EvalSample, metric: str = "auto") -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric != "auto":
        return metric
    named = sample.meta.get("metric")
    if named in METRICS[1:]:
        return named
    if sample.meta.get("type") == "grounding" or parse_grounding(sample.expected):
        return "grounding"
    if sample.meta.get("options") or sample.meta.get("choices"):
        return "choice"
    return "exact"


def score(sample: EvalSample, generated: str, metric: str) -> dict[str, float]:
    """The per-sample scores of `metric` (rates as 0/1, grounding as counts that sum over samples)."""
    if metric == "grounding":
        counts = grounding(generated, sample.expected)
        found_all = counts["expected_boxes"] > 0 and counts["true_positives"] == counts["expected_boxes"]
        return {**counts, "all_found": float(found_all)}
    if metric == "choice":
        options = sample.meta.get("options") or sample.meta.get("choices")
        return {"multiple_choice": multiple_choice(generated, sample.expected, options)}
    if metric == "contains":
        return {"contains": contains(generated, sample.expected)}
    return {"exact_match": exact_match(generated, sample.expected), "contains": contains(generated, sample.expected)}


def _rate(successes: float, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(successes, n)
    return {"value": successes / n if n else 0.0, "successes": successes, "n": n, "ci95": [lo, hi]}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of scored rows (each with `scores` and optionally `task`); see the module docstring."""
    out = _summary(rows)
    tasks = defaultdict(list)
    for row in rows:
        if row.get("task") is not None:
            tasks[row["task"]].append(row)
    if tasks:
        out["by_task"] = {task: _summary(group) for task, group in sorted(tasks.items())}
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": len(rows)}
    for name in ("exact_match", "contains", "multiple_choice", "all_found"):
        values = [r["scores"][name] for r in rows if name in r["scores"]]
        if values:
            out[name] = _rate(sum(values), len(values))
    grounded = [r["scores"] for r in rows if "expected_boxes" in r["scores"]]
    if grounded:
        counts = {k: sum(s[k] for s in grounded) for k in GROUNDING_COUNTS}
        summary = grounding_summary(counts)
        tp = counts["true_positives"]
        out["grounding"] = {
            "samples": len(grounded),
            "precision@0.5": _rate(tp, int(counts["predicted_boxes"])),
            "recall@0.5": _rate(tp, int(counts["expected_boxes"])),
            "f1@0.5": summary["f1"], "mean_iou": summary["mean_iou"], "malformed": counts["malformed"],
            **({"point_accuracy": _rate(counts["point_hits"], int(counts["predicted_points"]))}
               if counts["predicted_points"] else {}),
            "counts": counts,
        }
    return out


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's main numbers as flat metrics (for metrics.jsonl and W&B): eval/exact_match, ..."""
    flat: dict[str, float] = {}
    for name in ("exact_match", "contains", "multiple_choice", "all_found"):
        if name in summary:
            flat[f"eval/{name}"] = summary[name]["value"]
    if "grounding" in summary:
        g = summary["grounding"]
        flat.update({"eval/precision@0.5": g["precision@0.5"]["value"], "eval/recall@0.5": g["recall@0.5"]["value"],
                     "eval/f1@0.5": g["f1@0.5"], "eval/mean_iou": g["mean_iou"]})
    return flat


def format_summary(summary: dict[str, Any], indent: str = "  ") -> str:
    """The summary as lines a person reads: each rate with its count and interval."""
    lines = [f"{indent}{summary['samples']} samples"]
    lines += _rate_lines(summary, indent)
    for task, sub in summary.get("by_task", {}).items():
        lines.append(f"{indent}task {task} ({sub['samples']} samples)")
        lines += _rate_lines(sub, indent * 2)
    return "\n".join(lines)


def _rate_lines(summary: dict[str, Any], indent: str) -> list[str]:
    def fmt(name: str, rate: dict[str, Any]) -> str:
        lo, hi = rate["ci95"]
        return (f"{indent}{name:>16}: {rate['value']:6.1%}  ({rate['successes']:g}/{rate['n']}, "
                f"95% CI {lo:.1%}-{hi:.1%})")

    lines = [fmt(name, summary[name]) for name in ("exact_match", "contains", "multiple_choice", "all_found")
             if name in summary]
    if "grounding" in summary:
        g = summary["grounding"]
        lines += [fmt("precision@0.5", g["precision@0.5"]), fmt("recall@0.5", g["recall@0.5"]),
                  f"{indent}{'f1@0.5':>16}: {g['f1@0.5']:6.1%}", f"{indent}{'mean IoU':>16}: {g['mean_iou']:.3f}",
                  f"{indent}{'malformed tags':>16}: {g['malformed']:g}"]
        if "point_accuracy" in g:
            lines.append(fmt("point accuracy", g["point_accuracy"]))
    return lines
