from .configuration_fluid import FluidConfig, small_vae_config
from .modeling_fluid import FluidForConditionalGeneration, FluidModel, FluidOutput, FluidPreTrainedModel
from .processing_fluid import FluidProcessor


__all__ = [
    "FluidConfig",
    "FluidForConditionalGeneration",
    "FluidModel",
    "FluidOutput",
    "FluidPreTrainedModel",
    "FluidProcessor",
    "small_vae_config",
]
