"""DALL-E's discrete VAE (Ramesh et al. 2021, section 2.1 and appendix A).

The module tree mirrors OpenAI's released `dall_e` package (`blocks.input`, `blocks.group_{i}.block_{j}.id_path`,
`...res_path.conv_{1..4}`, `blocks.output.conv`) so its weights convert by renaming `w`/`b` to `weight`/`bias`.

Pixel convention (package-wide): `pixel_values` are in [-1, 1]. Inside, pixels are mapped to `[eps, 1 - eps]`
for the logit-Laplace likelihood (appendix A.3).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ...generation.sampling import rand_like_on
from ...modeling_utils import StrictLoadingMixin, outside_range
from .configuration_dalle_dvae import DalleDVAEConfig


@dataclass
class DalleDVAEOutput(ModelOutput):
    """Output of [`DalleDVAE.forward`].

    Args:
        loss: reconstruction NLL + `kl_weight` * KL, per pixel dimension (the normalised ELB of section 2.1).
        reconstruction_loss: per-pixel-dimension reconstruction loss.
        kl_loss: KL(q(z|x) || uniform) summed over grid positions, averaged over the batch.
        diversity_loss: log K - H(q̄), q̄ the batch's average code distribution: 0 when every code is used equally.
        logits: (B, K, h, w) encoder logits.
        reconstruction: (B, C, H, W) decoded pixels in [-1, 1].
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    kl_loss: torch.Tensor | None = None
    diversity_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None


class EncoderBlock(nn.Module):
    """`id_path(x) + post_gain * res_path(x)`, res_path = 3x3, 3x3, 3x3, 1x1 convs with ReLUs, 1/4 width inside."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int):
        super().__init__()
        hidden = out_channels // 4
        self.post_gain = 1.0 / num_layers**2
        self.id_path = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.res_path = nn.Sequential(
            OrderedDict(
                [
                    ("relu_1", nn.ReLU()),
                    ("conv_1", nn.Conv2d(in_channels, hidden, 3, padding=1)),
                    ("relu_2", nn.ReLU()),
                    ("conv_2", nn.Conv2d(hidden, hidden, 3, padding=1)),
                    ("relu_3", nn.ReLU()),
                    ("conv_3", nn.Conv2d(hidden, hidden, 3, padding=1)),
                    ("relu_4", nn.ReLU()),
                    ("conv_4", nn.Conv2d(hidden, out_channels, 1)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DecoderBlock(EncoderBlock):
    """As [`EncoderBlock`] with the decoder's kernel order: 1x1, 3x3, 3x3, 3x3."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int):
        super().__init__(in_channels, out_channels, num_layers)
        hidden = out_channels // 4
        self.res_path.conv_1 = nn.Conv2d(in_channels, hidden, 1)
        self.res_path.conv_4 = nn.Conv2d(hidden, out_channels, 3, padding=1)


def _groups(config: DalleDVAEConfig, block_cls, multipliers, first_in: int, resample: type | None):
    """Named groups of residual blocks; every group but the last ends with `resample`."""
    num_layers = len(multipliers) * config.num_blocks_per_group
    groups, width = [], first_in
    for g, mult in enumerate(multipliers, start=1):
        out = mult * config.hidden_size
        layers = []
        for b in range(1, config.num_blocks_per_group + 1):
            layers.append((f"block_{b}", block_cls(width, out, num_layers)))
            width = out
        if g < len(multipliers):
            layers.append(
                ("pool", nn.MaxPool2d(2))
                if resample is nn.MaxPool2d
                else ("upsample", nn.Upsample(scale_factor=2, mode="nearest"))
            )
        groups.append((f"group_{g}", nn.Sequential(OrderedDict(layers))))
    return groups, width


class DalleDVAEEncoder(nn.Module):
    """(B, C, H, W) mapped pixels -> (B, K, h, w) logits over the codebook."""

    def __init__(self, config: DalleDVAEConfig):
        super().__init__()
        first = config.channel_multipliers[0] * config.hidden_size
        groups, width = _groups(config, EncoderBlock, config.channel_multipliers, first, nn.MaxPool2d)
        self.blocks = nn.Sequential(
            OrderedDict(
                [("input", nn.Conv2d(config.num_channels, first, 7, padding=3))]
                + groups
                + [
                    (
                        "output",
                        nn.Sequential(
                            OrderedDict([("relu", nn.ReLU()), ("conv", nn.Conv2d(width, config.vocab_size, 1))])
                        ),
                    )
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class DalleDVAEDecoder(nn.Module):
    """(B, K, h, w) (soft) one-hot codes -> (B, 2C, H, W) logit-Laplace statistics (means first, then log-scales)."""

    def __init__(self, config: DalleDVAEConfig):
        super().__init__()
        multipliers = list(reversed(config.channel_multipliers))
        groups, width = _groups(config, DecoderBlock, multipliers, config.decoder_init_channels, nn.Upsample)
        self.blocks = nn.Sequential(
            OrderedDict(
                [("input", nn.Conv2d(config.vocab_size, config.decoder_init_channels, 1))]
                + groups
                + [
                    (
                        "output",
                        nn.Sequential(
                            OrderedDict([("relu", nn.ReLU()), ("conv", nn.Conv2d(width, 2 * config.num_channels, 1))])
                        ),
                    )
                ]
            )
        )

        self.blocks.input.is_code_embedding = True  # see DalleDVAEPreTrainedModel._init_weights

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.blocks(codes)

    def forward_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Hard codes (B, h, w) -> statistics. The 1x1 input conv over a one-hot input is an embedding lookup, so the
        (B, K, h, w) one-hot tensor is never built."""
        conv = self.blocks.input
        weight = conv.weight[:, :, 0, 0].t()  # (K, n_init)
        x = F.embedding(ids, weight) + conv.bias  # (B, h, w, n_init)
        x = x.permute(0, 3, 1, 2)  # (B, n_init, h, w)
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return x


class DalleDVAEPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = DalleDVAEConfig
    base_model_prefix = "dvae"
    main_input_name = "pixel_values"
    _no_split_modules = ["EncoderBlock", "DecoderBlock"]
    # A convolutional network without attention layers: every attention implementation asked of a model that nests
    # it (e.g. `DalleForConditionalGeneration.from_pretrained(..., attn_implementation="sdpa")`) holds trivially.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module):
        # OpenAI's init, N(0, 1 / fan_in) weights and zero biases, except the decoder's input conv: its input is a
        # (relaxed) one-hot over K codes, so it is an embedding table and gets N(0, 1). With 1 / fan_in its
        # outputs start ~1/sqrt(K) times smaller than the codes' information needs, and a small model takes
        # thousands of steps to leave the "decode the mean image" solution (measured on shapes at 32 px).
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            is_code_embedding = getattr(module, "is_code_embedding", False)
            module.weight.normal_(0.0, 1.0 if is_code_embedding else 1.0 / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.zero_()


class DalleDVAE(DalleDVAEPreTrainedModel):
    """DALL-E's discrete VAE: `encode(pixel_values) -> image_token_ids`, `decode(image_token_ids) -> pixel_values`,
    and `forward` for training with the Gumbel-softmax relaxation (temperature and KL weight are scheduled by the
    training recipe: temperature 1 -> 1/16, KL weight 0 -> 6.6 in the paper).

    Example:

    ```python
    >>> from hf_t2i import DalleDVAE, DalleDVAEConfig
    >>> dvae = DalleDVAE(DalleDVAEConfig(image_size=64, vocab_size=512))
    >>> ids = dvae.encode(torch.rand(1, 3, 64, 64) * 2 - 1)  # (1, 256)
    >>> pixels = dvae.decode(ids)  # (1, 3, 64, 64) in [-1, 1]
    ```
    """

    def __init__(self, config: DalleDVAEConfig):
        super().__init__(config)
        self.encoder = DalleDVAEEncoder(config)
        self.decoder = DalleDVAEDecoder(config)
        self.post_init()

    # -- pixel mapping (appendix A.3) -------------------------------------------------------------------------------
    def map_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [eps, 1 - eps]."""
        eps = self.config.logit_laplace_eps
        return eps + (1 - 2 * eps) * (pixel_values + 1) / 2

    def unmap_pixels(self, x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """[eps, 1 - eps] -> [-1, 1] (clamped for images; unclamped inside losses, where a clamp would stop the
        gradient of every pixel predicted past the range)."""
        eps = self.config.logit_laplace_eps
        x = (x - eps) / (1 - 2 * eps)
        return (x.clamp(0, 1) if clamp else x) * 2 - 1

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        size, channels = self.config.image_size, self.config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels or pixel_values.shape[-2:] != (size, size):
            raise ValueError(
                f"`pixel_values` must be (batch, {channels}, {size}, {size}), got {tuple(pixel_values.shape)}. "
                f"Resize the images to {size}x{size} (the processor does this)."
            )

    # -- public API -------------------------------------------------------------------------------------------------
    def get_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, K, h, w) encoder logits."""
        self._check_pixels(pixel_values)
        return self.encoder(self.map_pixels(pixel_values.to(self.dtype)))

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, h * w) image token ids in raster order (argmax, no Gumbel noise, as the
        paper does to build the prior's training data)."""
        return self.get_logits(pixel_values).argmax(dim=1).flatten(1)

    def _stats_to_pixels(self, stats: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        return self.unmap_pixels(torch.sigmoid(stats[:, : self.config.num_channels].float()), clamp)

    def decode(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, h * w) or (B, h, w) token ids -> (B, C, H, W) pixels in [-1, 1] (float32)."""
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
        return self._stats_to_pixels(self.decoder.forward_ids(image_token_ids.long()))

    def reconstruction_nll(self, stats: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-dimension reconstruction loss of `pixel_values` (B, C, H, W) under decoder statistics (B, 2C, H, W)."""
        channels = self.config.num_channels
        if self.config.reconstruction_loss == "mse":
            return F.mse_loss(self._stats_to_pixels(stats, clamp=False), pixel_values.float())
        x = self.map_pixels(pixel_values.float())
        mu, log_scale = stats[:, :channels].float(), stats[:, channels:].float()
        logit_x = torch.log(x) - torch.log1p(-x)
        # -log p(x) of the logit-Laplace distribution (appendix A.3):
        nll = (logit_x - mu).abs() * torch.exp(-log_scale) + log_scale + math.log(2.0) + torch.log(x) + torch.log1p(-x)
        return nll.mean()

    def forward(
        self,
        pixel_values: torch.Tensor,
        temperature: float = 1.0,
        kl_weight: float = 0.0,
        generator: torch.Generator | None = None,
        straight_through: bool = False,
        diversity_weight: float = 0.0,
        sample_codes: bool = True,
        return_dict: bool = True,
    ) -> DalleDVAEOutput | tuple:
        """Training pass with the Gumbel-softmax relaxation.

        Args:
            pixel_values: (B, C, H, W) in [-1, 1].
            temperature: Gumbel-softmax temperature tau.
            kl_weight: beta, the weight of KL(q(z|x) || uniform).
            generator: source of the Gumbel noise.
            straight_through: feed the decoder the hard one-hot of the relaxed sample (gradients still flow
                through the relaxation), so training decodes the same kind of input as `decode` does.
            diversity_weight: weight of `diversity_loss` (not in the paper, which has 0). The per-position KL to the
                uniform prior penalises *confident* codes, not *few* codes; on small, sparse data (our 32px shapes)
                the encoder then settles on a handful of codes. Maximising the entropy of the batch-averaged code
                distribution, as wav2vec 2.0's codebook diversity loss does, keeps the codebook in use.
            sample_codes: False decodes the one-hot of the logits' argmax, the codes `encode` gives the prior, with
                no Gumbel noise and no gradient reaching the encoder through them (`temperature` and
                `straight_through` then have no effect): fine-tuning the decoder alone on exactly what it decodes at
                inference. A relaxed sample of a spread-out posterior often names another code than the argmax.
        """
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        logits = self.get_logits(pixel_values)  # (B, K, h, w)
        if sample_codes:
            uniform = rand_like_on(tuple(logits.shape), generator, logits.device).clamp_(1e-10, 1 - 1e-7)
            gumbel = -torch.log(-torch.log(uniform))
            soft_codes = torch.softmax((logits.float() + gumbel) / temperature, dim=1).to(logits.dtype)
            if straight_through:
                hard = F.one_hot(soft_codes.argmax(dim=1), self.config.vocab_size).permute(0, 3, 1, 2)
                soft_codes = hard.to(soft_codes.dtype) + soft_codes - soft_codes.detach()
            stats = self.decoder(soft_codes)
        else:
            stats = self.decoder.forward_ids(logits.argmax(dim=1))
        reconstruction_loss = self.reconstruction_nll(stats, pixel_values)

        log_q = torch.log_softmax(logits.float(), dim=1)
        kl = (log_q.exp() * (log_q + math.log(self.config.vocab_size))).sum(dim=1)  # (B, h, w)
        kl_loss = kl.sum(dim=(1, 2)).mean()
        average_q = log_q.exp().mean(dim=(0, 2, 3))  # (K,) the batch's code usage
        entropy = -(average_q * torch.log(average_q.clamp_min(1e-12))).sum()
        diversity_loss = math.log(self.config.vocab_size) - entropy
        pixel_dims = pixel_values[0].numel()
        loss = reconstruction_loss + kl_weight * kl_loss / pixel_dims + diversity_weight * diversity_loss
        reconstruction = self._stats_to_pixels(stats.detach())
        out = DalleDVAEOutput(loss, reconstruction_loss, kl_loss, diversity_loss, logits, reconstruction)
        return out if return_dict else out.to_tuple()


__all__ = ["DalleDVAE", "DalleDVAEPreTrainedModel", "DalleDVAEOutput"]
