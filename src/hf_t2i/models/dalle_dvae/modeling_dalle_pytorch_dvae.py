"""DALLE-pytorch's own discrete VAE (its `DiscreteVAE`, trained by its `train_vae.py`), as a `PreTrainedModel` with
the package's image-tokenizer interface: `encode(pixel_values) -> ids`, `decode(ids) -> pixel_values`.

It is not OpenAI's dVAE ([`DalleDVAE`]): the encoder is `num_layers` stride-2 4x4 convs with ReLUs, then
`num_resnet_blocks` residual blocks, then a 1x1 conv to logits over the codebook; the decoder embeds the codes with a
codebook (`codebook_dim` wide), then (with residual blocks) a 1x1 conv and the residual blocks, `num_layers`
stride-2 4x4 transposed convs with ReLUs and a 1x1 conv to pixels. The module tree keeps DALLE-pytorch's indices
(`encoder.{i}.0`, `encoder.{i}.net.{j}`, `decoder.{i}`, `codebook`), so its weights load as they are.

Pixel convention (package-wide): `pixel_values` are in [-1, 1]. DALLE-pytorch normalises [0, 1] images by its
`normalization` (mean, std) before encoding, and its decoder predicts images in that normalised space; the config's
`normalization_mean` / `normalization_std` do the same here (with the defaults, 0.5 and 0.5, the normalised space
is [-1, 1] itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ...generation.sampling import rand_like_on
from ...modeling_utils import StrictLoadingMixin, outside_range
from .configuration_dalle_pytorch_dvae import DallePytorchDVAEConfig


@dataclass
class DallePytorchDVAEOutput(ModelOutput):
    """Output of [`DallePytorchDVAE.forward`].

    Args:
        loss: `reconstruction_loss + kl_div_loss_weight * kl_loss`.
        reconstruction_loss: MSE (or smooth L1) between the normalised images and the decoder's output.
        kl_loss: KL(q(z|x) || uniform) summed over grid positions, averaged over the batch (DALLE-pytorch sums it
            over the batch too).
        logits: (B, K, h, w) encoder logits.
        reconstruction: (B, C, H, W) decoded pixels in the package's [-1, 1] range.
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    kl_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None


class DallePytorchResBlock(nn.Module):
    """`x + net(x)`, net = 3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv at constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _encoder(config: DallePytorchDVAEConfig) -> nn.Sequential:
    """(B, C, H, W) normalised images -> (B, K, H / 2**L, W / 2**L) logits."""
    hidden = config.hidden_size
    widths = [config.num_channels] + [hidden] * config.num_layers
    layers = [
        nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU())
        for c_in, c_out in zip(widths[:-1], widths[1:])
    ]
    layers += [DallePytorchResBlock(hidden) for _ in range(config.num_resnet_blocks)]
    layers.append(nn.Conv2d(hidden, config.vocab_size, 1))
    return nn.Sequential(*layers)


def _decoder(config: DallePytorchDVAEConfig) -> nn.Sequential:
    """(B, codebook_dim, h, w) code vectors -> (B, C, h * 2**L, w * 2**L) images in the normalised space."""
    hidden = config.hidden_size
    layers = []
    if config.num_resnet_blocks:
        layers.append(nn.Conv2d(config.codebook_dim, hidden, 1))
        layers += [DallePytorchResBlock(hidden) for _ in range(config.num_resnet_blocks)]
    first = hidden if config.num_resnet_blocks else config.codebook_dim
    widths = [first] + [hidden] * config.num_layers
    layers += [
        nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU())
        for c_in, c_out in zip(widths[:-1], widths[1:])
    ]
    layers.append(nn.Conv2d(hidden, config.num_channels, 1))
    return nn.Sequential(*layers)


class DallePytorchDVAEPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = DallePytorchDVAEConfig
    base_model_prefix = "dvae"
    main_input_name = "pixel_values"
    _no_split_modules = ["DallePytorchResBlock"]
    # no attention layers: any implementation asked of a model that nests it holds trivially
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module):
        # PyTorch's default init, as DALLE-pytorch trains from it (convs: Kaiming-uniform; the codebook: N(0, 1))
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            module.reset_parameters()


class DallePytorchDVAE(DallePytorchDVAEPreTrainedModel):
    """DALLE-pytorch's `DiscreteVAE`: `encode(pixel_values) -> image_token_ids`, `decode(image_token_ids) ->
    pixel_values`, and `forward` for training with the Gumbel-softmax relaxation.

    Example:

    ```python
    >>> from hf_t2i import DallePytorchDVAE, DallePytorchDVAEConfig
    >>> dvae = DallePytorchDVAE(DallePytorchDVAEConfig(image_size=64, num_layers=3, vocab_size=512))
    >>> ids = dvae.encode(torch.rand(1, 3, 64, 64) * 2 - 1)  # (1, 64): an 8 x 8 grid
    >>> pixels = dvae.decode(ids)  # (1, 3, 64, 64), [-1, 1] once trained
    ```
    """

    def __init__(self, config: DallePytorchDVAEConfig):
        super().__init__(config)
        self.codebook = nn.Embedding(config.vocab_size, config.codebook_dim)
        self.encoder = _encoder(config)
        self.decoder = _decoder(config)
        self.post_init()

    def _normalization(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, 1, 1) mean and std on `like`'s device and dtype."""
        mean = torch.tensor(self.config.normalization_mean, device=like.device, dtype=like.dtype)
        std = torch.tensor(self.config.normalization_std, device=like.device, dtype=like.dtype)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels -> DALLE-pytorch's normalised space: `((x + 1) / 2 - mean) / std`."""
        mean, std = self._normalization(pixel_values)
        return ((pixel_values + 1) / 2 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised space -> [-1, 1] pixels (not clamped: the decoder's own output, as DALLE-pytorch's)."""
        mean, std = self._normalization(x)
        return (x * std + mean) * 2 - 1

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        size, channels = self.config.image_size, self.config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels or pixel_values.shape[-2:] != (size, size):
            raise ValueError(
                f"`pixel_values` must be (batch, {channels}, {size}, {size}), got {tuple(pixel_values.shape)}. "
                f"Resize the images to {size}x{size} (the processor does this)."
            )

    def get_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, K, h, w) encoder logits."""
        self._check_pixels(pixel_values)
        return self.encoder(self.normalize(pixel_values.to(self.dtype)))

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, h * w) image token ids in raster order (argmax: DALLE-pytorch's
        `get_codebook_indices`)."""
        return self.get_logits(pixel_values).argmax(dim=1).flatten(1)

    def decode(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, h * w) or (B, h, w) token ids -> (B, C, H, W) pixels in [-1, 1]."""
        grid = self.config.grid_size
        if image_token_ids.ndim == 2:
            if image_token_ids.shape[1] != grid * grid:
                raise ValueError(
                    f"`image_token_ids` must hold {grid * grid} tokens per image ({grid}x{grid}), "
                    f"got {image_token_ids.shape[1]}."
                )
            image_token_ids = image_token_ids.view(-1, grid, grid)
        if image_token_ids.ndim != 3 or image_token_ids.shape[1:] != (grid, grid):
            raise ValueError(f"`image_token_ids` must be (batch, {grid}, {grid}), got {tuple(image_token_ids.shape)}.")
        if outside_range(image_token_ids, self.config.vocab_size):
            raise ValueError(f"`image_token_ids` must be in [0, {self.config.vocab_size}).")
        codes = self.codebook(image_token_ids.long()).permute(0, 3, 1, 2)  # (B, d, h, w)
        return self.denormalize(self.decoder(codes))

    def forward(
        self,
        pixel_values: torch.Tensor,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DallePytorchDVAEOutput | tuple:
        """Training pass with the Gumbel-softmax relaxation, as DALLE-pytorch's `forward(img, return_loss=True)`.

        Args:
            pixel_values: (B, C, H, W) in [-1, 1].
            temperature: Gumbel-softmax temperature (default: `config.gumbel_temperature`).
            generator: source of the Gumbel noise.
        """
        temperature = self.config.gumbel_temperature if temperature is None else temperature
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        self._check_pixels(pixel_values)
        target = self.normalize(pixel_values.to(self.dtype))
        logits = self.encoder(target)  # (B, K, h, w)
        uniform = rand_like_on(tuple(logits.shape), generator, logits.device).clamp_(1e-10, 1 - 1e-7)
        soft = torch.softmax((logits.float() - torch.log(-torch.log(uniform))) / temperature, dim=1).to(logits.dtype)
        if self.config.straight_through:
            hard = F.one_hot(soft.argmax(dim=1), self.config.vocab_size).permute(0, 3, 1, 2).to(soft.dtype)
            soft = hard + soft - soft.detach()
        sampled = torch.einsum("bkhw,kd->bdhw", soft, self.codebook.weight)  # (B, d, h, w)
        out = self.decoder(sampled)
        loss_fn = F.smooth_l1_loss if self.config.reconstruction_loss == "smooth_l1" else F.mse_loss
        reconstruction_loss = loss_fn(out.float(), target.float())
        log_q = torch.log_softmax(logits.float(), dim=1)
        kl_loss = (log_q.exp() * (log_q + math.log(self.config.vocab_size))).sum(dim=(1, 2, 3)).mean()
        loss = reconstruction_loss + self.config.kl_div_loss_weight * kl_loss
        result = DallePytorchDVAEOutput(loss, reconstruction_loss, kl_loss, logits, self.denormalize(out.detach()))
        return result if return_dict else result.to_tuple()


__all__ = ["DallePytorchDVAE", "DallePytorchDVAEOutput", "DallePytorchDVAEPreTrainedModel"]
