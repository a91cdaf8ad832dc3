from .configuration_parti import PartiConfig
from .modeling_parti import PartiDecoder, PartiForConditionalGeneration, PartiModel, PartiPreTrainedModel
from .processing_parti import PartiProcessor


__all__ = [
    "PartiConfig",
    "PartiDecoder",
    "PartiForConditionalGeneration",
    "PartiModel",
    "PartiPreTrainedModel",
    "PartiProcessor",
]
