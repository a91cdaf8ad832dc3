"""ViT-VQGAN (Yu et al. 2021), Parti's image tokenizer, and Parti's learned super-resolution decoder.

Tokenizer, top to bottom (section 3 of the ViT-VQGAN paper):

1. Patchify: non-overlapping `patch_size` patches, a linear patch embedding, learned position embeddings.
2. Encoder: bidirectional pre-LN transformer blocks (no mask), final LayerNorm, then a two-layer MLP with a tanh in
   the middle whose last linear projects to the `code_dim`-dimensional lookup space (section 3.2, factorised codes).
3. Quantize: l2-normalise, nearest code by cosine similarity, straight-through estimator, codebook + commitment loss,
   moving-average code usage (for perplexity and dead-code re-initialisation) (`layers.FactorizedVectorQuantizer`).
4. Decoder: codes projected up, learned positions, blocks, final LayerNorm, tanh MLP to the pixels of each patch,
   unpatchify. The decoder predicts logit-Laplace statistics (mean and log-scale per pixel, DALL-E appendix A.3);
   pixels are `unmap(sigmoid(mean))` in [-1, 1].

Only the autoencoding losses (L2, logit-Laplace, VQ) live here. The perceptual and adversarial terms need networks
that are training-only (a discriminator, a frozen feature network): they are in `hf_t2i.training.losses`, so that
neither is ever saved in a `ViTVQGAN` checkpoint.

Pixel convention (package-wide): `pixel_values` in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from ...layers import TransformerBlock
from ...layers.quantizer import FactorizedVectorQuantizer
from ...modeling_utils import StrictLoadingMixin, outside_range
from .configuration_vit_vqgan import ViTVQGANConfig, ViTVQGANUpsamplerConfig


# ------------------------------------------------------------------------------------------------------- outputs
@dataclass
class ViTVQGANOutput(ModelOutput):
    """Output of [`ViTVQGAN.forward`].

    Args:
        loss: `l2_loss_weight * l2_loss + logit_laplace_loss_weight * logit_laplace_loss + vq_loss`.
        reconstruction_loss: the weighted sum of the two reconstruction terms.
        l2_loss: mean squared error of the pixels in [-1, 1].
        logit_laplace_loss: per-dimension logit-Laplace NLL of the pixels.
        vq_loss: codebook + `commitment_cost` * commitment loss.
        perplexity: exp(entropy) of this batch's code usage.
        reconstruction: (B, C, H, W) decoded pixels, NOT clamped and with gradients (the perceptual and adversarial
            terms of training are computed on it); `decode` clamps to [-1, 1].
        image_token_ids: (B, N) code ids in raster order.
        latents: (B, N, code_dim) encoder outputs before normalisation (what dead codes are re-initialised from).
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    l2_loss: torch.Tensor | None = None
    logit_laplace_loss: torch.Tensor | None = None
    vq_loss: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    image_token_ids: torch.Tensor | None = None
    latents: torch.Tensor | None = None


@dataclass
class ViTVQGANUpsamplerOutput(ModelOutput):
    """Output of [`ViTVQGANUpsampler.forward`]: `loss`, `reconstruction_loss`, `l2_loss`, `logit_laplace_loss` and
    the unclamped `reconstruction` (B, C, sH, sW), as in [`ViTVQGANOutput`]."""

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    l2_loss: torch.Tensor | None = None
    logit_laplace_loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None


# -------------------------------------------------------------------------------------------- pixel statistics
class LogitLaplacePixels:
    """Maps between decoder statistics and pixels, and the reconstruction losses (DALL-E appendix A.3).

    Statistics are (B, 2C, H, W): logit-Laplace means first, then log-scales, in the logit space of pixels mapped to
    `[eps, 1 - eps]`.
    """

    def __init__(self, num_channels: int, eps: float):
        self.num_channels, self.eps = num_channels, eps

    def to_pixels(self, stats: torch.Tensor) -> torch.Tensor:
        """(B, 2C, H, W) -> (B, C, H, W) pixels `unmap(sigmoid(mean))`, not clamped (slightly beyond [-1, 1] at the
        extremes, so the L2 loss has gradients everywhere)."""
        mapped = torch.sigmoid(stats[:, : self.num_channels].float())
        return (mapped - self.eps) / (1 - 2 * self.eps) * 2 - 1

    def logit_laplace_nll(self, stats: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Mean per-dimension -log p(x) of `pixel_values` (B, C, H, W) in [-1, 1] under `stats`."""
        x = self.eps + (1 - 2 * self.eps) * (pixel_values.float() + 1) / 2
        mu, log_scale = stats[:, : self.num_channels].float(), stats[:, self.num_channels :].float()
        logit_x = torch.log(x) - torch.log1p(-x)
        nll = (logit_x - mu).abs() * torch.exp(-log_scale) + log_scale + math.log(2.0) + torch.log(x) + torch.log1p(-x)
        return nll.mean()

    def losses(self, stats: torch.Tensor, pixel_values: torch.Tensor, l2_weight: float, logit_laplace_weight: float):
        """(weighted reconstruction loss, l2, logit-Laplace NLL, unclamped pixels)."""
        reconstruction = self.to_pixels(stats)
        l2 = F.mse_loss(reconstruction, pixel_values.float())
        logit_laplace = self.logit_laplace_nll(stats, pixel_values)
        return l2_weight * l2 + logit_laplace_weight * logit_laplace, l2, logit_laplace, reconstruction


# ----------------------------------------------------------------------------------------------------- modules
def _blocks(
    hidden: int, layers: int, heads: int, intermediate: int, act: str, eps: float, config: PreTrainedConfig
) -> nn.ModuleList:
    """Bidirectional pre-LN blocks: called without a mask, every patch attends to every patch. `config` is the
    model's: its `_attn_implementation` picks the attention function."""
    return nn.ModuleList(
        TransformerBlock(hidden, heads, intermediate, layer_idx=i, activation=act, norm_eps=eps, config=config)
        for i in range(layers)
    )


def _tanh_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Linear -> tanh -> Linear: the paper's output head of both encoder and decoder (section 3.1)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features))


class ViTVQGANEncoder(nn.Module):
    """(B, C, H, W) pixels -> (B, N, code_dim) latents, N = (H / patch)^2 in raster order."""

    def __init__(self, config: ViTVQGANConfig):
        super().__init__()
        hidden, patch = config.hidden_size, config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, hidden, kernel_size=patch, stride=patch)
        self.position_embeddings = nn.Embedding(config.num_image_tokens, hidden)
        self.layers = _blocks(
            hidden,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.layer_norm_eps,
            config,
        )
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.output = _tanh_mlp(hidden, hidden, config.code_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.position_embeddings.weight
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))  # (B, N, code_dim)


class ViTVQGANDecoder(nn.Module):
    """(B, N, code_dim) codes on a `grid` x `grid` raster -> (B, 2C, grid * patch, grid * patch) statistics.

    Shared by the tokenizer (patch = its patch size) and the upsampler (patch = patch size * scale factor), whose
    config (`config`) picks the attention function."""

    def __init__(
        self,
        code_dim: int,
        grid_size: int,
        output_patch_size: int,
        num_channels: int,
        hidden_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        intermediate_size: int,
        hidden_act: str,
        layer_norm_eps: float,
        config: PreTrainedConfig,
    ):
        super().__init__()
        self.grid_size, self.patch_size, self.num_channels = grid_size, output_patch_size, num_channels
        self.code_projection = nn.Linear(code_dim, hidden_size)
        self.position_embeddings = nn.Embedding(grid_size * grid_size, hidden_size)
        self.layers = _blocks(
            hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps, config
        )
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.output = _tanh_mlp(hidden_size, hidden_size, 2 * num_channels * output_patch_size**2)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.code_projection(codes) + self.position_embeddings.weight  # (B, N, D)
        for layer in self.layers:
            x = layer(x)
        x = self.output(self.norm(x))  # (B, N, 2C * p * p)
        batch, grid, patch, channels = x.shape[0], self.grid_size, self.patch_size, 2 * self.num_channels
        x = x.view(batch, grid, grid, channels, patch, patch)  # (B, h, w, 2C, p, p)
        x = x.permute(0, 3, 1, 4, 2, 5)  # (B, 2C, h, p, w, p)
        return x.reshape(batch, channels, grid * patch, grid * patch)  # (B, 2C, H, W)


# ---------------------------------------------------------------------------------------------------- models
class ViTVQGANPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = ViTVQGANConfig
    base_model_prefix = "vit_vqgan"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    # `layers.Attention` runs transformers' attention interface (no masks here). Flash and flex attention have not
    # been tested with these models.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["TransformerBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):  # position embeddings (the codebook is re-drawn below)
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, FactorizedVectorQuantizer):  # visited after its nn.Embedding child
            module.reset_parameters()
        elif isinstance(module, ViTVQGANDecoder):  # visited after its nn.Linear child
            # Codes are unit vectors (per-dimension variance 1 / code_dim): std 1 gives unit-variance features.
            # With std 0.02 the codes would enter the decoder as small as its position embeddings, and training
            # on shapes was markedly slower (MSE 0.0154 vs 0.0115 after 200 steps of a continuous autoencoder).
            module.code_projection.weight.normal_(0.0, 1.0)
        elif isinstance(module, ViTVQGANUpsampler):
            # not a trained weight: zeros until `from_tokenizer` / `load_codebook` copies the tokenizer's codes (then
            # saved with the model), as in `__init__`, so that an init on the meta device gives the same buffer
            module.codebook.zero_()


def _check_image_token_ids(image_token_ids: torch.Tensor, grid: int, vocab_size: int) -> torch.Tensor:
    """(B, N) or (B, h, w) ids -> (B, N) long, validated."""
    if not isinstance(image_token_ids, torch.Tensor):
        raise TypeError(f"`image_token_ids` must be a tensor, got {type(image_token_ids).__name__}.")
    if image_token_ids.ndim == 3:
        if image_token_ids.shape[1:] != (grid, grid):
            raise ValueError(f"`image_token_ids` must be (batch, {grid}, {grid}), got {tuple(image_token_ids.shape)}.")
        image_token_ids = image_token_ids.flatten(1)
    if image_token_ids.ndim != 2 or image_token_ids.shape[1] != grid * grid:
        raise ValueError(
            f"`image_token_ids` must hold {grid * grid} tokens per image ({grid}x{grid}), shaped (batch, "
            f"{grid * grid}) or (batch, {grid}, {grid}); got {tuple(image_token_ids.shape)}."
        )
    if image_token_ids.is_floating_point():
        raise TypeError("`image_token_ids` must be an integer tensor.")
    if outside_range(image_token_ids, vocab_size):
        raise ValueError(f"`image_token_ids` must be in [0, {vocab_size}).")
    return image_token_ids.long()


def _check_pixels(pixel_values: torch.Tensor, channels: int, size: int, name: str = "pixel_values") -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != channels or pixel_values.shape[-2:] != (size, size):
        raise ValueError(
            f"`{name}` must be (batch, {channels}, {size}, {size}) in [-1, 1], got {tuple(pixel_values.shape)}. "
            f"Resize the images to {size}x{size} (T2IImageProcessor(image_size={size}) does this)."
        )


class ViTVQGAN(ViTVQGANPreTrainedModel):
    """ViT-VQGAN image tokenizer: `encode(pixel_values) -> image_token_ids`, `decode(image_token_ids) -> pixel_values`,
    and `forward(pixel_values)` for training (autoencoding losses; see
    `hf_t2i.training.losses.ViTVQGANForAdversarialTraining` for the perceptual and adversarial terms).

    Example:

    ```python
    >>> from hf_t2i import ViTVQGAN, ViTVQGANConfig
    >>> tokenizer = ViTVQGAN(ViTVQGANConfig(image_size=64, patch_size=4))
    >>> ids = tokenizer.encode(torch.rand(1, 3, 64, 64) * 2 - 1)  # (1, 256)
    >>> pixels = tokenizer.decode(ids)  # (1, 3, 64, 64) in [-1, 1]
    ```
    """

    def __init__(self, config: ViTVQGANConfig):
        super().__init__(config)
        self.encoder = ViTVQGANEncoder(config)
        self.quantizer = FactorizedVectorQuantizer(
            config.vocab_size, config.code_dim, config.commitment_cost, config.usage_decay
        )
        self.decoder = ViTVQGANDecoder(
            config.code_dim,
            config.grid_size,
            config.patch_size,
            config.num_channels,
            config.decoder_hidden_size,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
            config.hidden_act,
            config.layer_norm_eps,
            config,
        )
        self.pixels = LogitLaplacePixels(config.num_channels, config.logit_laplace_eps)
        self.post_init()

    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, N, code_dim) encoder outputs, before normalisation and lookup."""
        _check_pixels(pixel_values, self.config.num_channels, self.config.image_size)
        return self.encoder(pixel_values.to(self.dtype))

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, N) image token ids in raster order (N = grid_size ** 2)."""
        return self.quantizer.nearest(self.encode_latents(pixel_values))

    def decode_stats(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) or (B, h, w) ids -> (B, 2C, H, W) logit-Laplace statistics (differentiable w.r.t. the decoder)."""
        ids = _check_image_token_ids(image_token_ids, self.config.grid_size, self.config.vocab_size)
        return self.decoder(self.quantizer.lookup(ids).to(self.dtype))

    def decode(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) or (B, h, w) ids -> (B, C, H, W) pixels in [-1, 1] (float32)."""
        return self.pixels.to_pixels(self.decode_stats(image_token_ids)).clamp(-1, 1)

    def get_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last linear layer (VQGAN's adaptive adversarial weight is computed on it)."""
        return self.decoder.output[-1].weight

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> ViTVQGANOutput | tuple:
        """Autoencode `pixel_values` (B, C, H, W) in [-1, 1] through the codebook (straight-through)."""
        latents = self.encode_latents(pixel_values)  # (B, N, code_dim)
        quantized = self.quantizer(latents)
        stats = self.decoder(quantized.quantized)  # (B, 2C, H, W)
        reconstruction_loss, l2, logit_laplace, reconstruction = self.pixels.losses(
            stats, pixel_values, self.config.l2_loss_weight, self.config.logit_laplace_loss_weight
        )
        out = ViTVQGANOutput(
            loss=reconstruction_loss + quantized.loss,
            reconstruction_loss=reconstruction_loss,
            l2_loss=l2,
            logit_laplace_loss=logit_laplace,
            vq_loss=quantized.loss,
            perplexity=quantized.perplexity,
            reconstruction=reconstruction,
            image_token_ids=quantized.indices,
            latents=latents,
        )
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def with_decoder(self, **sizes: int) -> ViTVQGAN:
        """A copy of this tokenizer with a decoder of other `sizes` (keywords of `ViTVQGANConfig.decoder_settings`):
        Parti's second tokenizer stage (Yu et al. 2022, section 2.1) freezes the trained encoder and codebook and
        trains a larger decoder on their codes (`hf-t2i train vit_vqgan --no-train-encoder --decoder-num-hidden-layers
        N`). The encoder and codebook are copied, so the copy encodes exactly as this tokenizer.

        When width, heads and feed-forward size stay and there are at least as many blocks, the new decoder starts as
        this one (function-preserving growth): its projections, first blocks, norm and output head are copied, and the
        added blocks come after them with both residual branches' output projections at zero, so the copy decodes
        exactly as this tokenizer until it is trained. Otherwise the new decoder is freshly initialised."""
        unknown = sorted(set(sizes) - set(self.config.decoder_settings))
        if unknown:
            raise ValueError(
                f"`with_decoder` got {unknown}, which do not size the decoder; pass only "
                f"{list(self.config.decoder_settings)}."
            )
        config = type(self.config).from_dict({**self.config.to_dict(), **sizes})
        grown = type(self)(config).to(device=self.device, dtype=self.dtype)
        grown.encoder.load_state_dict(self.encoder.state_dict())
        grown.quantizer.load_state_dict(self.quantizer.state_dict())
        old, new = self.decoder, grown.decoder
        same_blocks = all(  # every size but the number of blocks
            getattr(config, setting) == getattr(self.config, setting)
            for setting in config.decoder_settings
            if setting != "decoder_num_hidden_layers"
        )
        if same_blocks and len(new.layers) >= len(old.layers):
            for name in ("code_projection", "position_embeddings", "norm", "output"):
                getattr(new, name).load_state_dict(getattr(old, name).state_dict())
            for block, trained in zip(new.layers, old.layers):
                block.load_state_dict(trained.state_dict())
            for block in new.layers[len(old.layers) :]:  # identity until trained: x + 0 + 0
                for projection in (block.self_attn.out_proj, block.mlp.fc2):
                    projection.weight.zero_()
                    projection.bias.zero_()
        return grown

    @torch.no_grad()
    def reinit_dead_codes(
        self, pixel_values: torch.Tensor, threshold: float | None = None, generator: torch.Generator | None = None
    ) -> int:
        """Re-initialise the codes whose moving-average usage fell below `threshold` with encoder outputs of
        `pixel_values` (see `FactorizedVectorQuantizer.reinit_dead_codes`). Returns how many were replaced.

        Call it between optimizer steps (the training recipe does every `reinit_dead_codes_every` steps), never
        between a forward and its backward: it edits the codebook in place."""
        return self.quantizer.reinit_dead_codes(self.encode_latents(pixel_values), threshold, generator)


class ViTVQGANUpsamplerPreTrainedModel(ViTVQGANPreTrainedModel):
    config_class = ViTVQGANUpsamplerConfig
    base_model_prefix = "vit_vqgan_upsampler"
    main_input_name = "image_token_ids"


class ViTVQGANUpsampler(ViTVQGANUpsamplerPreTrainedModel):
    """Parti's learned super-resolution stage: a second, larger ViT decoder that maps the tokens of a [`ViTVQGAN`]
    image to `scale_factor` times its resolution. It holds its own copy of the tokenizer's (frozen) codebook as a
    buffer, so `decode` works without the tokenizer; train it on tokens of low-resolution images from the frozen
    tokenizer against the high-resolution images (`hf-t2i train vit_vqgan_upsampler`).

    Example:

    ```python
    >>> upsampler = ViTVQGANUpsampler.from_tokenizer(tokenizer, hidden_size=256, num_hidden_layers=4)
    >>> pixels = upsampler.decode(tokenizer.encode(images))  # (B, 3, 2 * 64, 2 * 64)
    ```
    """

    def __init__(self, config: ViTVQGANUpsamplerConfig):
        super().__init__(config)
        # The tokenizer's l2-normalised codes (K, code_dim); frozen, saved with the model. Zeros until
        # `from_tokenizer` / `load_codebook` copies them.
        self.register_buffer("codebook", torch.zeros(config.vocab_size, config.code_dim))
        self.decoder = ViTVQGANDecoder(
            config.code_dim,
            config.grid_size,
            config.output_patch_size,
            config.num_channels,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_act,
            config.layer_norm_eps,
            config,
        )
        self.pixels = LogitLaplacePixels(config.num_channels, config.logit_laplace_eps)
        self.post_init()

    #: the upsampler's decoder sizes and the tokenizer config fields they are copied from (`copy_decoder=True`)
    _DECODER_SIZES = {
        "hidden_size": "decoder_hidden_size",
        "num_hidden_layers": "decoder_num_hidden_layers",
        "num_attention_heads": "decoder_num_attention_heads",
        "intermediate_size": "decoder_intermediate_size",
        "hidden_act": "hidden_act",
        "layer_norm_eps": "layer_norm_eps",
    }

    @classmethod
    def from_tokenizer(cls, tokenizer: ViTVQGAN, copy_decoder: bool = False, **kwargs) -> ViTVQGANUpsampler:
        """A new upsampler for `tokenizer`'s tokens with a copy of its codebook; `kwargs` set the decoder's size.

        With `copy_decoder`, the upsampler starts as the tokenizer's trained decoder: its sizes, its weights, and its
        output head with each pixel's row repeated `scale_factor` x `scale_factor` times, so that before training it
        decodes exactly the tokenizer's reconstruction upsampled to the nearest pixel (training then only has to
        sharpen it, where a fresh decoder would first have to learn the codes)."""
        if not isinstance(tokenizer, ViTVQGAN):
            raise TypeError(f"`tokenizer` must be a ViTVQGAN, got {type(tokenizer).__name__}.")
        if copy_decoder:
            sizes = sorted(set(kwargs) & set(cls._DECODER_SIZES))
            if sizes:
                raise ValueError(
                    f"`copy_decoder=True` takes the decoder's sizes from the tokenizer; do not pass {sizes}."
                )
            kwargs.update({ours: getattr(tokenizer.config, theirs) for ours, theirs in cls._DECODER_SIZES.items()})
        model = cls(ViTVQGANUpsamplerConfig.from_tokenizer_config(tokenizer.config, **kwargs))
        model.load_codebook(tokenizer)
        if copy_decoder:
            model._copy_decoder(tokenizer.decoder)
        return model

    @torch.no_grad()
    def _copy_decoder(self, trained: ViTVQGANDecoder) -> None:
        """Load `trained` (a tokenizer's decoder of the same sizes) into this decoder, its output head's rows repeated
        so that each of its pixels covers `scale_factor` x `scale_factor` of ours."""
        state = dict(trained.state_dict())
        scale, head = self.config.scale_factor, f"output.{len(trained.output) - 1}"
        for name in (f"{head}.weight", f"{head}.bias"):
            rows = state[name].view(2 * self.config.num_channels, trained.patch_size, trained.patch_size, -1)
            rows = rows.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
            state[name] = rows.reshape(-1, *state[name].shape[1:])
        self.decoder.load_state_dict(state)

    @torch.no_grad()
    def load_codebook(self, tokenizer: ViTVQGAN) -> None:
        """Copy `tokenizer`'s normalised codebook into this model."""
        codes = tokenizer.quantizer.normalized_codebook()
        if codes.shape != self.codebook.shape:
            raise ValueError(
                f"The tokenizer's codebook is {tuple(codes.shape)} but this upsampler expects "
                f"{tuple(self.codebook.shape)} (vocab_size, code_dim)."
            )
        self.codebook.copy_(codes)

    @torch.no_grad()
    def tokenizer_mismatch(self, tokenizer: ViTVQGAN, atol: float = 1e-3) -> str | None:
        """Why this upsampler would not decode `tokenizer`'s tokens (another token grid, or another codebook than
        the tokenizer's normalised one beyond `atol`, about twice float16's rounding of unit vectors), or None."""
        grid = tokenizer.config.grid_size
        codes = tokenizer.quantizer.normalized_codebook().float()
        if self.config.grid_size != grid or self.codebook.shape != codes.shape:
            return (
                f"it decodes a {self.config.grid_size}x{self.config.grid_size} grid of {tuple(self.codebook.shape)} "
                f"codes, the tokenizer draws {grid}x{grid} of {tuple(codes.shape)}"
            )
        gap = (self.codebook.float() - codes.to(self.codebook.device)).abs().max().item()
        if gap > atol:  # another tokenizer's codes differ by ~1
            return f"it holds another codebook than the tokenizer's (largest difference {gap:.3g})"
        return None

    def decode_stats(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) or (B, h, w) ids -> (B, 2C, sH, sW) logit-Laplace statistics."""
        ids = _check_image_token_ids(image_token_ids, self.config.grid_size, self.config.vocab_size)
        return self.decoder(F.embedding(ids, self.codebook).to(self.dtype))

    def decode(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) or (B, h, w) ids -> (B, C, scale * H, scale * W) pixels in [-1, 1] (float32)."""
        return self.pixels.to_pixels(self.decode_stats(image_token_ids)).clamp(-1, 1)

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.output[-1].weight

    def forward(
        self, image_token_ids: torch.Tensor, pixel_values: torch.Tensor, return_dict: bool = True
    ) -> ViTVQGANUpsamplerOutput | tuple:
        """Decode `image_token_ids` (tokens of the low-resolution image) and score against `pixel_values`
        (B, C, scale * H, scale * W), the high-resolution image in [-1, 1]."""
        _check_pixels(pixel_values, self.config.num_channels, self.config.output_size)
        stats = self.decode_stats(image_token_ids)
        loss, l2, logit_laplace, reconstruction = self.pixels.losses(
            stats, pixel_values, self.config.l2_loss_weight, self.config.logit_laplace_loss_weight
        )
        out = ViTVQGANUpsamplerOutput(loss, loss, l2, logit_laplace, reconstruction)
        return out if return_dict else out.to_tuple()


__all__ = [
    "ViTVQGAN",
    "ViTVQGANOutput",
    "ViTVQGANPreTrainedModel",
    "ViTVQGANUpsampler",
    "ViTVQGANUpsamplerOutput",
    "ViTVQGANUpsamplerPreTrainedModel",
]
