from .configuration_fluid import FluidConfig, MarConfig, small_vae_config
from .modeling_fluid import (
    FluidForConditionalGeneration,
    FluidMAEModel,
    FluidModel,
    FluidOutput,
    FluidPreTrainedModel,
    MarForConditionalGeneration,
)
from .processing_fluid import FluidProcessor


__all__ = [
    "FluidConfig",
    "FluidForConditionalGeneration",
    "FluidMAEModel",
    "FluidModel",
    "FluidOutput",
    "FluidPreTrainedModel",
    "FluidProcessor",
    "MarConfig",
    "MarForConditionalGeneration",
    "small_vae_config",
]
