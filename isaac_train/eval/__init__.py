"""Evaluation: task metrics of generated answers (metrics.py)."""

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

__all__ = ["chosen_option", "contains", "exact_match", "grounding", "grounding_summary", "multiple_choice",
           "normalize", "wilson_interval"]
