from .configuration_transfusion import PATCH_ENCODERS, TransfusionConfig
from .generation_transfusion import TransfusionInterleavedOutput
from .modeling_transfusion import (
    TransfusionForConditionalGeneration,
    TransfusionModel,
    TransfusionModelOutput,
    TransfusionOutput,
    TransfusionPreTrainedModel,
)
from .processing_transfusion import TransfusionProcessor, add_image_tokens


__all__ = [
    "PATCH_ENCODERS",
    "TransfusionConfig",
    "TransfusionForConditionalGeneration",
    "TransfusionInterleavedOutput",
    "TransfusionModel",
    "TransfusionModelOutput",
    "TransfusionOutput",
    "TransfusionPreTrainedModel",
    "TransfusionProcessor",
    "add_image_tokens",
]
