"""isaac-train: training and fine-tuning of Perceptron's Isaac vision-language model.

Importing the package registers Isaac with transformers' Auto classes (model_type `isaac`).
"""

from .model import IsaacConfig, IsaacForConditionalGeneration, IsaacModel, IsaacVisionConfig
from .model.registration import register_auto_classes
from .processing.image_processing import IsaacImageProcessorFast
from .processing.processor import IsaacProcessor

register_auto_classes()

__all__ = [
    "IsaacConfig",
    "IsaacForConditionalGeneration",
    "IsaacImageProcessorFast",
    "IsaacModel",
    "IsaacProcessor",
    "IsaacVisionConfig",
]
__version__ = "0.1.0"
