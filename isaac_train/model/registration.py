"""Register Isaac with transformers' Auto classes, once, so `AutoModel*.from_pretrained(dir)` works."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from ..processing.image_processing import IsaacImageProcessorFast
from ..processing.processor import IsaacProcessor
from .config import IsaacConfig, IsaacVisionConfig
from .modeling import IsaacForConditionalGeneration, IsaacModel

_done = False


def register_auto_classes() -> None:
    """Idempotent: map model_type `isaac` (and its vision sub-config) to our classes."""
    global _done
    if _done:
        return
    AutoConfig.register(IsaacConfig.model_type, IsaacConfig, exist_ok=True)
    AutoConfig.register(IsaacVisionConfig.model_type, IsaacVisionConfig, exist_ok=True)
    AutoModel.register(IsaacConfig, IsaacModel, exist_ok=True)
    AutoModelForCausalLM.register(IsaacConfig, IsaacForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(IsaacConfig, IsaacForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(IsaacConfig, fast_image_processor_class=IsaacImageProcessorFast, exist_ok=True)
    AutoProcessor.register(IsaacConfig, IsaacProcessor, exist_ok=True)
    _done = True
