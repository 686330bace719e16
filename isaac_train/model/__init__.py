"""Isaac model code: pure nn.Modules, no torch.distributed."""

from .config import IsaacConfig, IsaacVisionConfig
from .modeling import IsaacForConditionalGeneration, IsaacModel, IsaacPreTrainedModel, isaac_of

__all__ = ["IsaacConfig", "IsaacVisionConfig", "IsaacForConditionalGeneration", "IsaacModel", "IsaacPreTrainedModel",
           "isaac_of"]
