from .adversarial import ViTVQGANForAdversarialTraining, ViTVQGANTrainingOutput
from .configuration_vit_vqgan import ViTVQGANConfig, ViTVQGANUpsamplerConfig
from .discriminator import StyleGANDiscriminator
from .modeling_vit_vqgan import (
    ViTVQGAN,
    ViTVQGANOutput,
    ViTVQGANPreTrainedModel,
    ViTVQGANUpsampler,
    ViTVQGANUpsamplerOutput,
    ViTVQGANUpsamplerPreTrainedModel,
)
from .perceptual import InceptionPerceptualLoss


__all__ = [
    "InceptionPerceptualLoss",
    "StyleGANDiscriminator",
    "ViTVQGAN",
    "ViTVQGANConfig",
    "ViTVQGANForAdversarialTraining",
    "ViTVQGANOutput",
    "ViTVQGANPreTrainedModel",
    "ViTVQGANTrainingOutput",
    "ViTVQGANUpsampler",
    "ViTVQGANUpsamplerConfig",
    "ViTVQGANUpsamplerOutput",
    "ViTVQGANUpsamplerPreTrainedModel",
]
