"""isaac-train: training and fine-tuning of Perceptron's Isaac vision-language model.

Importing the package registers Isaac with transformers' Auto classes (model_type `isaac`): at once when
transformers is already imported, else the moment it is (registration_hook.py), so that `import isaac_train`
itself loads neither torch nor transformers and the command-line tools start in well under a second. The model
and processor classes below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_getattr
from .registration_hook import register_when_transformers_loads, registered_on_access

if TYPE_CHECKING:
    from .model import IsaacConfig, IsaacForConditionalGeneration, IsaacModel, IsaacVisionConfig
    from .model.registration import register_auto_classes  # noqa: F401  (not in __all__, as before)
    from .processing.image_processing import IsaacImageProcessorFast
    from .processing.processor import IsaacProcessor

_LAZY = {
    "IsaacConfig": ".model",
    "IsaacForConditionalGeneration": ".model",
    "IsaacModel": ".model",
    "IsaacVisionConfig": ".model",
    "IsaacImageProcessorFast": ".processing.image_processing",
    "IsaacProcessor": ".processing.processor",
    "register_auto_classes": ".model.registration",
}

__all__ = [
    "IsaacConfig",
    "IsaacForConditionalGeneration",
    "IsaacImageProcessorFast",
    "IsaacModel",
    "IsaacProcessor",
    "IsaacVisionConfig",
]
__version__ = "0.1.0"


# whoever holds an Isaac class can rely on the Auto classes knowing it
__getattr__ = lazy_getattr(__name__, _LAZY, on_load=registered_on_access)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


register_when_transformers_loads()
