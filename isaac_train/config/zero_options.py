"""Validation of `strategy.zero` (extra DeepSpeed zero_optimization keys) with DeepSpeed's own validator, before any
process starts. It lives with the schema: checking settings is configuration knowledge, and the strategy that
uses them (distributed/zero.py) only builds the DeepSpeed config from settings already checked."""

from __future__ import annotations

from typing import Any


def check_zero_options(zero_options: dict[str, Any]) -> str | None:
    """None when `strategy.zero` holds valid zero_optimization keys, else the reason (DeepSpeed's validator)."""
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    except ImportError:
        return ("DeepSpeed is not installed: pip install 'isaac-train[deepspeed]' (or choose strategy=fsdp)")
    if "stage" in zero_options:
        return "the stage comes from the strategy name (zero1 / zero2 / zero3); remove strategy.zero.stage"
    try:
        DeepSpeedZeroConfig(**zero_options)
    except Exception as err:  # pydantic's ValidationError names the bad key
        return f"invalid zero_optimization settings {zero_options}: {str(err).splitlines()[0:4]}"
    return None
