from .configuration_fluid import FluidConfig, small_vae_config
from .modeling_fluid import (
    FluidForConditionalGeneration,
    FluidMAEModel,
    FluidModel,
    FluidOutput,
    FluidPreTrainedModel,
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
    "small_vae_config",
]
