"""Evaluation: eval samples (samples.py), batched generation split over ranks (generate.py), task metrics
(metrics.py), per-sample metric choice and summaries (score.py), the whole run (run.py) and `isaac-eval` (cli.py).

The names below are imported on first use (PEP 562): `isaac-eval --help` must not wait for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_getattr

if TYPE_CHECKING:
    from .generate import generate_answers, generate_batch
    from .metrics import (
        chosen_option,
        contains,
        exact_match,
        grounding,
        grounding_summary,
        multiple_choice,
        normalize,
        wilson_interval,
    )
    from .run import EvalResult, evaluate, predict, score_rows, write_results
    from .samples import EvalSample, EvalSet, content_text, read_eval_samples
    from .score import format_summary, metric_for, score, summarize

_LAZY = {
    **dict.fromkeys(("generate_answers", "generate_batch"), ".generate"),
    **dict.fromkeys(("chosen_option", "contains", "exact_match", "grounding", "grounding_summary", "multiple_choice",
                     "normalize", "wilson_interval"), ".metrics"),
    **dict.fromkeys(("EvalResult", "evaluate", "predict", "score_rows", "write_results"), ".run"),
    **dict.fromkeys(("EvalSample", "EvalSet", "content_text", "read_eval_samples"), ".samples"),
    **dict.fromkeys(("format_summary", "metric_for", "score", "summarize"), ".score"),
}

__all__ = ["EvalResult", "EvalSample", "EvalSet", "chosen_option", "contains", "content_text", "evaluate",
           "exact_match", "format_summary", "generate_answers", "generate_batch", "grounding", "grounding_summary",
           "metric_for", "multiple_choice", "normalize", "predict", "read_eval_samples", "score", "score_rows",
           "summarize", "wilson_interval", "write_results"]


__getattr__ = lazy_getattr(__name__, _LAZY)
