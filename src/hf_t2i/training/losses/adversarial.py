"""Adversarial training of ViT-VQGAN (and of its upsampler) with ONE optimizer.

`ViTVQGANForAdversarialTraining` holds the generator (a `ViTVQGAN` or a `ViTVQGANUpsampler`), a
`StyleGANDiscriminator` and an optional frozen perceptual network, and returns one loss

    loss = generator_loss + discriminator_loss
    generator_loss = reconstruction (L2 / logit-Laplace) + VQ + w_perc * perceptual + w_adv(step) * lambda * G_adv

whose gradients move each network by its own terms only (simultaneous gradient descent-ascent):

- `G_adv` scores the reconstruction with the discriminator's parameters DETACHED (`torch.func.functional_call`
  with detached tensors), so it moves the generator but never the discriminator;
- `discriminator_loss` scores the real image and the DETACHED reconstruction, so it moves the discriminator only;
- the perceptual network's weights are buffers, so nothing moves them.

One backward pass then gives both networks their own gradients, and the shared loop's single AdamW steps them
together. Both networks get the loop's learning rate and gradient clipping (clipping is over their joint norm).

`w_adv(step)` is 0 before `disc_start_step` (the discriminator is then not even run, and gets no gradient) and
`adversarial_loss_weight` afterwards (ViT-VQGAN section 3.3: 0.1). With `adaptive_adversarial_weight`, lambda is
VQGAN's adaptive weight (Esser et al. 2021, eq. 7): `|grad_L nll| / (|grad_L G_adv| + 1e-4)` on the decoder's last
layer L, clamped to [0, 1e4] and detached; otherwise lambda = 1.

Only the generator is exported (`generator.save_pretrained`): the discriminator and the perceptual network stay out
of every model checkpoint (the discriminator is in the training checkpoints, for exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from ...configuration_utils import check_choice
from ...models.vit_vqgan import ViTVQGAN, ViTVQGANUpsampler
from .discriminator import GAN_LOSSES, StyleGANDiscriminator, discriminator_loss, generator_loss


@dataclass
class ViTVQGANTrainingOutput(ModelOutput):
    """Output of [`ViTVQGANForAdversarialTraining.forward`].

    Args:
        loss: `generator_loss + discriminator_loss` (what the optimizer minimises).
        generator_loss: every term that moves the generator.
        discriminator_loss: the term that moves the discriminator (0 before `disc_start_step`).
        reconstruction_loss: weighted L2 + logit-Laplace.
        vq_loss: codebook + commitment loss (0 for the upsampler, whose codebook is frozen).
        perceptual_loss: unweighted perceptual distance (0 without a perceptual network).
        adversarial_loss: unweighted generator GAN loss `G_adv` (0 before `disc_start_step`).
        adversarial_weight: `w_adv(step) * lambda`, the weight `G_adv` entered the loss with.
        perplexity: exp(entropy) of the batch's code usage (tokenizer only).
        reconstruction: (B, C, H, W) unclamped reconstruction.
        real_logits, fake_logits: (B,) discriminator logits (None before `disc_start_step`).
    """

    loss: torch.Tensor | None = None
    generator_loss: torch.Tensor | None = None
    discriminator_loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    vq_loss: torch.Tensor | None = None
    perceptual_loss: torch.Tensor | None = None
    adversarial_loss: torch.Tensor | None = None
    adversarial_weight: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    real_logits: torch.Tensor | None = None
    fake_logits: torch.Tensor | None = None


class ViTVQGANForAdversarialTraining(nn.Module):
    """The module the `vit_vqgan` / `vit_vqgan_upsampler` recipes train (see the module docstring).

    Args:
        generator: the `ViTVQGAN` tokenizer or a `ViTVQGANUpsampler`.
        discriminator: a `StyleGANDiscriminator` at the generator's output resolution, or None (no GAN term).
        perceptual: a frozen feature network called as `perceptual(reconstruction, target) -> scalar` (e.g.
            `InceptionPerceptualLoss`), or None.
        perceptual_loss_weight: its weight (ViT-VQGAN: 0.1).
        adversarial_loss_weight: weight of `G_adv` once the discriminator is on (ViT-VQGAN: 0.1).
        disc_start_step: optimizer step from which the discriminator is trained and `G_adv` is used.
        gan_loss: "non_saturating" (softplus, StyleGAN's) or "hinge".
        adaptive_adversarial_weight: scale `G_adv` by VQGAN's adaptive weight.
    """

    def __init__(
        self,
        generator: ViTVQGAN | ViTVQGANUpsampler,
        discriminator: StyleGANDiscriminator | None = None,
        perceptual: nn.Module | None = None,
        perceptual_loss_weight: float = 0.1,
        adversarial_loss_weight: float = 0.1,
        disc_start_step: int = 0,
        gan_loss: str = "non_saturating",
        adaptive_adversarial_weight: bool = False,
    ):
        super().__init__()
        if not isinstance(generator, (ViTVQGAN, ViTVQGANUpsampler)):
            raise TypeError(f"`generator` must be a ViTVQGAN or a ViTVQGANUpsampler, got {type(generator).__name__}.")
        check_choice("gan_loss", gan_loss, GAN_LOSSES)
        if perceptual_loss_weight < 0 or adversarial_loss_weight < 0:
            raise ValueError(
                "`perceptual_loss_weight` and `adversarial_loss_weight` must be >= 0, got "
                f"{perceptual_loss_weight} and {adversarial_loss_weight}."
            )
        if disc_start_step < 0:
            raise ValueError(f"`disc_start_step` must be >= 0, got {disc_start_step}.")
        size = (
            generator.config.output_size if isinstance(generator, ViTVQGANUpsampler) else generator.config.image_size
        )
        if discriminator is not None and discriminator.image_size != size:
            raise ValueError(
                f"The discriminator sees {discriminator.image_size}px images but the generator makes {size}px ones; "
                f"build it with `StyleGANDiscriminator(image_size={size})`."
            )
        if perceptual is not None and generator.config.num_channels != 3:
            raise ValueError(
                "The perceptual network needs RGB images; the generator has "
                f"{generator.config.num_channels} channels. Pass `perceptual=None`."
            )
        self.generator = generator
        self.discriminator = discriminator
        self.perceptual = perceptual
        self.perceptual_loss_weight = perceptual_loss_weight
        self.adversarial_loss_weight = adversarial_loss_weight
        self.disc_start_step = disc_start_step
        self.gan_loss = gan_loss
        self.adaptive_adversarial_weight = adaptive_adversarial_weight

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Checkpoint the generator's transformer blocks (the discriminator is small)."""
        self.generator.gradient_checkpointing_enable(**kwargs)

    def discriminator_is_on(self, step: int) -> bool:
        return self.discriminator is not None and self.adversarial_loss_weight > 0 and step >= self.disc_start_step

    def _adaptive_weight(self, nll: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """VQGAN's lambda on the generator's last layer; 1 where no graph is being built (evaluation)."""
        if not (self.adaptive_adversarial_weight and torch.is_grad_enabled() and adversarial.requires_grad):
            return torch.ones((), device=nll.device)
        last = self.generator.get_last_layer()
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        adversarial_grad = torch.autograd.grad(adversarial, last, retain_graph=True)[0]
        return (nll_grad.norm() / (adversarial_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def forward(
        self,
        pixel_values: torch.Tensor,
        step: int = 0,
        image_token_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> ViTVQGANTrainingOutput | tuple:
        """One training loss.

        Args:
            pixel_values: (B, C, H, W) target images in [-1, 1] (the tokenizer's input; the upsampler's
                high-resolution target).
            step: optimizer steps taken so far (turns the discriminator on at `disc_start_step`).
            image_token_ids: (B, N) tokens of the low-resolution images; upsampler only.
        """
        if isinstance(self.generator, ViTVQGANUpsampler):
            if image_token_ids is None:
                raise ValueError("Training an upsampler needs `image_token_ids` (tokens of the low-resolution image).")
            out = self.generator(image_token_ids, pixel_values)
            vq_loss, perplexity = torch.zeros((), device=out.loss.device), None
        else:
            if image_token_ids is not None:
                raise ValueError(
                    "`image_token_ids` is for the upsampler; the tokenizer encodes `pixel_values` itself."
                )
            out = self.generator(pixel_values)
            vq_loss, perplexity = out.vq_loss, out.perplexity
        reconstruction, target = out.reconstruction, pixel_values.float()
        zero = torch.zeros((), device=reconstruction.device)

        nll = out.reconstruction_loss
        perceptual_loss = zero
        if self.perceptual is not None and self.perceptual_loss_weight > 0:
            perceptual_loss = self.perceptual(reconstruction, target)
            nll = nll + self.perceptual_loss_weight * perceptual_loss

        adversarial_loss, adversarial_weight, d_loss = zero, zero, zero
        real_logits = fake_logits = None
        if self.discriminator_is_on(step):
            # G term: D's parameters detached, so only the generator moves.
            frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            fake_for_generator = torch.func.functional_call(self.discriminator, frozen, (reconstruction,))
            adversarial_loss = generator_loss(fake_for_generator, self.gan_loss)
            adversarial_weight = self.adversarial_loss_weight * self._adaptive_weight(nll, adversarial_loss)
            # D term: the reconstruction detached, so only the discriminator moves.
            real_logits = self.discriminator(target)
            fake_logits = self.discriminator(reconstruction.detach())
            d_loss = discriminator_loss(real_logits, fake_logits, self.gan_loss)

        g_loss = nll + vq_loss + adversarial_weight * adversarial_loss
        result = ViTVQGANTrainingOutput(
            loss=g_loss + d_loss,
            generator_loss=g_loss,
            discriminator_loss=d_loss,
            reconstruction_loss=out.reconstruction_loss,
            vq_loss=vq_loss,
            perceptual_loss=perceptual_loss,
            adversarial_loss=adversarial_loss,
            adversarial_weight=adversarial_weight,
            perplexity=perplexity,
            reconstruction=reconstruction,
            real_logits=real_logits,
            fake_logits=fake_logits,
        )
        return result if return_dict else result.to_tuple()


__all__ = ["ViTVQGANForAdversarialTraining", "ViTVQGANTrainingOutput"]
