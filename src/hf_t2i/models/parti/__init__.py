from ..image_tokenizers import DiffusersVQConfig
from .configuration_parti import PartiConfig
from .modeling_parti import PartiDecoder, PartiForConditionalGeneration, PartiModel, PartiPreTrainedModel
from .processing_parti import PartiProcessor


__all__ = [
    "DiffusersVQConfig",
    "PartiConfig",
    "PartiDecoder",
    "PartiForConditionalGeneration",
    "PartiModel",
    "PartiPreTrainedModel",
    "PartiProcessor",
]
