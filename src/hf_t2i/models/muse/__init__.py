from .configuration_muse import MuseConfig
from .generation_muse import MuseGenerationState, MuseSampling, MuseStepOutput
from .modeling_muse import (
    MuseForConditionalGeneration,
    MuseModel,
    MuseModelOutput,
    MuseOutput,
    MusePreTrainedModel,
    MuseUViTModel,
)
from .processing_muse import MuseProcessor


__all__ = [
    "MuseConfig",
    "MuseForConditionalGeneration",
    "MuseGenerationState",
    "MuseModel",
    "MuseModelOutput",
    "MuseOutput",
    "MusePreTrainedModel",
    "MuseProcessor",
    "MuseSampling",
    "MuseStepOutput",
    "MuseUViTModel",
]
