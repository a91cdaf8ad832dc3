"""Training-only losses and the networks that exist only to compute them (a GAN discriminator, a frozen perceptual
network). None of them is part of an exported model: the models under `hf_t2i.models` carry their own likelihood
losses, and these are added around them by the recipes that need them (`vit_vqgan`, `vit_vqgan_upsampler`,
`autoencoder_kl`)."""

from .adversarial import ViTVQGANForAdversarialTraining, ViTVQGANTrainingOutput
from .discriminator import GAN_LOSSES, StyleGANDiscriminator, discriminator_loss, generator_loss, minibatch_stddev
from .perceptual import INCEPTION_STEM, InceptionPerceptualLoss, load_inception_stem


__all__ = [
    "GAN_LOSSES",
    "INCEPTION_STEM",
    "InceptionPerceptualLoss",
    "StyleGANDiscriminator",
    "ViTVQGANForAdversarialTraining",
    "ViTVQGANTrainingOutput",
    "discriminator_loss",
    "generator_loss",
    "load_inception_stem",
    "minibatch_stddev",
]
