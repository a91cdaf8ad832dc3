from .configuration_vit_vqgan import ViTVQGANConfig, ViTVQGANUpsamplerConfig
from .modeling_vit_vqgan import (
    ViTVQGAN,
    ViTVQGANOutput,
    ViTVQGANPreTrainedModel,
    ViTVQGANUpsampler,
    ViTVQGANUpsamplerOutput,
    ViTVQGANUpsamplerPreTrainedModel,
)


__all__ = [
    "ViTVQGAN",
    "ViTVQGANConfig",
    "ViTVQGANOutput",
    "ViTVQGANPreTrainedModel",
    "ViTVQGANUpsampler",
    "ViTVQGANUpsamplerConfig",
    "ViTVQGANUpsamplerOutput",
    "ViTVQGANUpsamplerPreTrainedModel",
]
