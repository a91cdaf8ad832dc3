"""Fluid (Fan et al. 2024): masked / autoregressive image-token prediction with continuous (per-token diffusion head)
or discrete (cross-entropy) tokens, in random or raster order, conditioned on text through cross-attention.

Token layout (N = grid * grid image tokens, raster positions 0..N-1, each with a learned position embedding):

    random order (bidirectional):  input i = [MASK] if masked else embed(t_i);  output i predicts t_i (masked ones)
    raster order (causal):         input i = [START] if i == 0 else embed(t_(i-1));  output i predicts t_i

- Continuous tokens: `AutoencoderKL` latents (nested as `vae`), `(z - shift_factor) * scaling_factor`, grouped
  `patch_size` x `patch_size` (`layers.patchify`). The head is `layers.DiffusionHead` conditioned on the backbone's
  output at the token's position, trained with the DDPM epsilon loss, `diffusion_batch_mul` noise draws per token.
- Discrete tokens: ids of a nested VQ tokenizer (`vqmodel`: `DalleDVAE` or `ViTVQGAN`), a linear head, cross-entropy.
- Training mask (random order, section 3): ratio `cos(pi / 2 * r)`, `r ~ U(0, 1)`, at least one token masked.
- Sampling (random order): a random permutation per image (from the `generator`) fixes the order; iteration `k` of
  `K` reveals tokens until `N * cos(pi / 2 * (k + 1) / K)` stay masked (MAR / MUSE). Classifier-free guidance runs the
  conditional and unconditional rows as one doubled batch, on the head's epsilon (continuous) or on logits (discrete).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache, StaticCache
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from ...generation import (
    apply_guidance,
    autoregressive_sample,
    build_logits_processor,
    guidance_scale_at,
    rand_like_on,
    sample_tokens,
    validate_sampling_args,
)
from ...layers import (
    additive_mask,
    cache_length,
    causal_mask,
    key_length,
    patchify,
    slice_mask,
    transformer_blocks,
    unpatchify,
)
from ...layers.diffusion_head import DiffusionHead, DiffusionHeadScheduler, build_ddpm_scheduler, ddpm_sample
from ...layers.diffusion_head import diffusion_loss as ddpm_loss
from ...layers.text_encoder import TextEncoder, padding_mask
from ...modeling_utils import init_transformer_weights
from ..dalle_dvae.modeling_dalle_dvae import DalleDVAE
from ..parti.modeling_parti import build_text_encoder
from ..vit_vqgan.modeling_vit_vqgan import ViTVQGAN
from .configuration_fluid import FluidConfig


VQ_MODELS = {"dalle_dvae": DalleDVAE, "vit_vqgan": ViTVQGAN}


@dataclass
class FluidModelOutput(ModelOutput):
    """Backbone outputs: `last_hidden_state` (B, T, C), the cache, and the text states (B, S, C)."""

    last_hidden_state: torch.Tensor | None = None
    past_key_values: Cache | None = None
    encoder_last_hidden_state: torch.Tensor | None = None


@dataclass
class FluidOutput(ModelOutput):
    """Outputs of [`FluidForConditionalGeneration`].

    Args:
        loss: mean DDPM epsilon MSE (continuous) or cross-entropy (discrete) over the predicted tokens.
        logits: (B, N, V) image-code logits (discrete only).
        last_hidden_state: (B, N, C) backbone outputs, the diffusion head's conditions.
        mask: (B, N) bool, the tokens the loss is taken on (the masked ones in random order; all in raster).
        past_key_values: the cache (raster order).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    past_key_values: Cache | None = None


def cosine_mask_ratio(progress: torch.Tensor | float) -> torch.Tensor | float:
    """Fraction of tokens still masked at `progress` in [0, 1]: `cos(pi / 2 * progress)` (MaskGIT / MUSE / Fluid)."""
    if isinstance(progress, torch.Tensor):
        return torch.cos(math.pi / 2 * progress)
    return math.cos(math.pi / 2 * progress)


def random_orders(batch: int, length: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, N) independent random permutations of `range(N)` drawn from `generator`."""
    return rand_like_on((batch, length), generator, device).argsort(dim=1)


def random_training_mask(batch: int, length: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, N) bool mask, True = masked: per row a cosine-schedule ratio of positions (at least one), chosen at random."""
    ratio = cosine_mask_ratio(rand_like_on((batch,), generator, device))
    count = (ratio * length).ceil().clamp(1, length).long()  # (B,)
    ranks = random_orders(batch, length, generator, device).argsort(dim=1)  # rank of each position in its order
    return ranks < count[:, None]


class FluidPreTrainedModel(PreTrainedModel):
    config_class = FluidConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, DiffusionHead):
            module.reset_parameters()  # runs after its children: the head keeps its zero-initialised modulations
        elif isinstance(module, FluidModel) and module is self:
            module.special_embedding.normal_(0.0, std)
        else:
            # the image tokenizer and a pretrained text encoder (its weights get loaded) keep their own init
            init_transformer_weights(module, std, owner=self, nested=(PreTrainedModel,))


class FluidModel(FluidPreTrainedModel):
    """Text encoder + image-token transformer (bidirectional in random order, causal in raster order), each block
    cross-attending to the text; returns the hidden states at the image positions."""

    def __init__(self, config: FluidConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.text_encoder = build_text_encoder(config)
        if config.is_continuous:
            self.token_embeddings = nn.Linear(config.token_dim, hidden)
        else:
            self.token_embeddings = nn.Embedding(config.image_vocab_size, hidden)
        # [MASK] in random order, [START] in raster order
        self.special_embedding = nn.Parameter(torch.zeros(hidden))
        self.position_embeddings = nn.Embedding(config.num_image_tokens, hidden)
        self.layers = transformer_blocks(config, cross_attention=True)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self._causal: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.gradient_checkpointing = False
        self.post_init()

    def get_encoder(self) -> TextEncoder:
        return self.text_encoder

    def get_input_embeddings(self) -> nn.Module:
        return self.token_embeddings

    def check_image_tokens(self, image_tokens: torch.Tensor, name: str = "image_tokens") -> None:
        c = self.config
        n = c.num_image_tokens
        if c.is_continuous:
            if (
                not image_tokens.is_floating_point()
                or image_tokens.ndim != 3
                or image_tokens.shape[1:] != (n, c.token_dim)
            ):
                raise ValueError(
                    f"`{name}` must be float latents (batch, {n}, {c.token_dim}) for continuous Fluid, got "
                    f"{tuple(image_tokens.shape)} {image_tokens.dtype}. Use `encode_images(pixel_values)`."
                )
        else:
            if image_tokens.is_floating_point() or image_tokens.ndim != 2 or image_tokens.shape[1] != n:
                raise ValueError(
                    f"`{name}` must be integer ids (batch, {n}) for discrete Fluid, got {tuple(image_tokens.shape)} "
                    f"{image_tokens.dtype}. Use `encode_images(pixel_values)`."
                )
            if image_tokens.numel() and (image_tokens.min() < 0 or image_tokens.max() >= c.image_vocab_size):
                raise ValueError(f"`{name}` ids must be in [0, {c.image_vocab_size}).")

    def embed_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) latents or (B, T) ids -> (B, T, C)."""
        if self.config.is_continuous:
            return self.token_embeddings(image_tokens.to(self.token_embeddings.weight.dtype))
        return self.token_embeddings(image_tokens)

    def input_embeddings(self, image_tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's inputs for all N positions (without positions): random order replaces the `mask`ed tokens
        (B, N) by [MASK]; raster order shifts right behind [START]."""
        embeds = self.embed_image_tokens(image_tokens)  # (B, N, C)
        special = self.special_embedding.to(embeds.dtype).expand(embeds.shape[0], 1, -1)  # (B, 1, C)
        if self.config.is_causal:
            return torch.cat([special, embeds[:, :-1]], dim=1)
        if mask is not None:
            embeds = torch.where(mask[..., None], special, embeds)
        return embeds

    def causal_attention_mask(self, device, dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._causal:
            self._causal[key] = additive_mask(causal_mask(self.config.num_image_tokens, device), dtype)
        return self._causal[key]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BaseModelOutput:
        return self.text_encoder(input_ids, attention_mask)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> FluidModelOutput:
        """
        Args:
            input_ids, attention_mask: (B, S) caption ids and padding mask (not needed with `encoder_outputs`).
            image_tokens: (B, N, D) latents or (B, N) ids in raster order, turned into inputs by `input_embeddings`.
            mask: (B, N) bool, True = replaced by [MASK] (random order).
            inputs_embeds: (B, T, C) backbone inputs instead of `image_tokens` (the sampling loops).
            position_ids: (B or 1, T) raster positions of the inputs; default: after the cached ones, in order. In
                random order any permutation of the positions gives the same outputs, permuted.
            past_key_values: an `EncoderDecoderCache` (raster order).
        """
        c = self.config
        if inputs_embeds is None:
            if image_tokens is None:
                raise ValueError("Pass `image_tokens` (or `inputs_embeds`).")
            self.check_image_tokens(image_tokens)
            if mask is not None and (mask.shape != image_tokens.shape[:2] or mask.dtype != torch.bool):
                raise ValueError(
                    f"`mask` must be bool (batch, {c.num_image_tokens}), got {tuple(mask.shape)} {mask.dtype}."
                )
            inputs_embeds = self.input_embeddings(image_tokens, mask)
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("Pass `input_ids` (the caption) or precomputed `encoder_outputs`.")
            encoder_outputs = self.encode_text(input_ids, attention_mask)
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        use_cache = (use_cache if use_cache is not None else c.use_cache) and c.is_causal
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(config=c), DynamicCache(config=c))
        cache = past_key_values if use_cache else None

        start, length = cache_length(cache), inputs_embeds.shape[1]
        if start + length > c.num_image_tokens:
            raise ValueError(f"Positions {start}..{start + length - 1} exceed the {c.num_image_tokens} image tokens.")
        if position_ids is None:
            position_ids = torch.arange(start, start + length, device=inputs_embeds.device)[None]
        hidden = inputs_embeds + self.position_embeddings(position_ids)
        self_mask = None
        if c.is_causal:
            if position_ids.shape[-1] != length or not torch.equal(
                position_ids[0], torch.arange(start, start + length, device=position_ids.device)
            ):
                raise ValueError("Raster-order Fluid reads its inputs in raster order; leave `position_ids` unset.")
            full = self.causal_attention_mask(hidden.device, hidden.dtype)
            self_mask = slice_mask(full, start, length, key_length(cache, length))
        cross_mask = padding_mask(attention_mask, hidden.dtype)
        text = encoder_outputs.last_hidden_state
        for layer in self.layers:
            hidden = layer(hidden, self_mask, cache, text, cross_mask)
        return FluidModelOutput(
            last_hidden_state=self.norm(hidden), past_key_values=cache, encoder_last_hidden_state=text
        )


class FluidForConditionalGeneration(FluidPreTrainedModel):
    """Fluid with its output head (diffusion MLP or linear) and its image tokenizer (`vae` or `vqmodel`).

    Example:

    ```python
    >>> model = FluidForConditionalGeneration.from_pretrained(path)
    >>> inputs = FluidProcessor.from_pretrained(path)(text=["a red circle"])
    >>> tokens = model.sample_image_tokens(**inputs, generator=torch.Generator().manual_seed(0))
    >>> pixels = model.decode_image_tokens(tokens)  # (1, 3, H, W) in [-1, 1]
    ```
    """

    def __init__(self, config: FluidConfig):
        super().__init__(config)
        self.model = FluidModel(config)
        self.vae = self.vqmodel = self.diffusion_head = self.lm_head = None
        if config.is_continuous:
            from diffusers import AutoencoderKL

            self.diffusion_head = DiffusionHead(
                config.token_dim,
                config.hidden_size,
                config.diffusion_head_width,
                config.diffusion_head_layers,
            )
            self.vae = AutoencoderKL(**config.vae_config)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.image_vocab_size)
            self.vqmodel = VQ_MODELS[config.vq_config.model_type](config.vq_config)
        self._scheduler = None
        self.post_init()

    def get_encoder(self) -> TextEncoder:
        return self.model.text_encoder

    def load_text_encoder(self, path: str) -> None:
        """Load pretrained weights into the (frozen) text encoder, e.g. all-MiniLM-L6-v2 from `minilm_path()`."""
        self.model.text_encoder.load_pretrained(path)

    def image_tokenizer(self) -> nn.Module:
        """The nested `AutoencoderKL` (continuous) or VQ tokenizer (discrete)."""
        return self.vae if self.config.is_continuous else self.vqmodel

    @property
    def scheduler(self) -> DiffusionHeadScheduler:
        """The DDPM schedule the head was trained with (built from the config; continuous only)."""
        if not self.config.is_continuous:
            raise ValueError("Discrete Fluid has no diffusion head, hence no scheduler.")
        if self._scheduler is None:
            self._scheduler = build_ddpm_scheduler(self.config.num_train_timesteps, self.config.beta_schedule)
        return self._scheduler

    # -- image tokens <-> pixels -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """(B, 3, S, S) pixels in [-1, 1] -> image tokens: (B, N, D) scaled latent patches (the posterior mean, or a
        draw from it with `sample=True`), or (B, N) VQ ids."""
        c = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[-2:] != (c.image_size, c.image_size):
            raise ValueError(
                f"`pixel_values` must be (batch, 3, {c.image_size}, {c.image_size}), got {tuple(pixel_values.shape)}."
            )
        if not c.is_continuous:
            return self.vqmodel.encode(pixel_values)
        dist = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
        latents = dist.sample(generator) if sample else dist.mode()  # (B, C, h, w)
        shift = self.vae.config.shift_factor or 0.0
        latents = (latents - shift) * self.vae.config.scaling_factor
        return patchify(latents, c.patch_size)  # (B, N, C * p * p)

    @torch.no_grad()
    def decode_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (as `encode_images` returns them) -> (B, 3, S, S) pixels in [-1, 1] (float32)."""
        c = self.config
        self.model.check_image_tokens(image_tokens)
        if not c.is_continuous:
            return self.vqmodel.decode(image_tokens).float()
        latents = unpatchify(image_tokens, c.patch_size, c.latent_size, c.latent_size)  # (B, C, h, w)
        latents = latents / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
        return self.vae.decode(latents.to(self.vae.dtype)).sample.float().clamp(-1, 1)

    # -- training --------------------------------------------------------------------------------------------------
    def head_loss(self, hidden: torch.Tensor, targets: torch.Tensor, generator=None) -> torch.Tensor:
        """Loss of the head on M selected tokens: hidden (M, C), targets (M, D) latents or (M,) ids."""
        if not self.config.is_continuous:
            return F.cross_entropy(self.lm_head(hidden).float(), targets)
        repeats = self.config.diffusion_batch_mul if self.training else 1
        condition = hidden.repeat(repeats, 1)  # (M * r, C)
        return ddpm_loss(
            lambda x, t: self.diffusion_head(x, t, condition),
            targets.repeat(repeats, 1).to(hidden.dtype),
            self.scheduler,
            generator,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        generator: torch.Generator | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FluidOutput | tuple:
        """
        Args:
            image_tokens: (B, N, D) scaled latent tokens or (B, N) ids (`encode_images`), in raster order.
            mask: (B, N) bool, random order only: the tokens replaced by [MASK] and predicted. Default in training /
                with `return_loss`: drawn from the cosine schedule with `generator`.
            generator: source of the training mask, diffusion timesteps and noise.
            return_loss: compute the loss (needs the full `image_tokens`).
            (text and cache arguments as in [`FluidModel.forward`])
        """
        c = self.config
        return_dict = return_dict if return_dict is not None else c.return_dict
        if image_tokens is None:
            raise ValueError("Pass `image_tokens` (`encode_images(pixel_values)`).")
        self.model.check_image_tokens(image_tokens)
        batch, length = image_tokens.shape[:2]
        if c.is_causal:
            if mask is not None:
                raise ValueError("`mask` applies to random-order Fluid only; raster order predicts every token.")
            loss_mask = torch.ones(batch, length, dtype=torch.bool, device=image_tokens.device)
        else:
            if mask is None and return_loss:
                mask = random_training_mask(batch, length, generator, image_tokens.device)
            loss_mask = mask
        outputs = self.model(
            input_ids,
            attention_mask,
            image_tokens=image_tokens,
            mask=mask,
            position_ids=position_ids,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden) if not c.is_continuous else None
        loss = None
        if return_loss and loss_mask is not None:
            if position_ids is not None:
                raise ValueError("The loss reads targets in raster order; leave `position_ids` unset with it.")
            if hidden.shape[1] != length:
                raise ValueError("The loss needs all N positions in one call (no cache offset).")
            loss = self.head_loss(hidden[loss_mask], image_tokens[loss_mask], generator)
        out = FluidOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=hidden,
            mask=loss_mask,
            past_key_values=outputs.past_key_values,
        )
        return out if return_dict else out.to_tuple()

    # -- sampling --------------------------------------------------------------------------------------------------
    def _draw(
        self,
        hidden: torch.Tensor,
        guided: bool,
        scale: float,
        generator,
        scheduler,
        diffusion_steps: int,
        temperature: float,
        processors,
        do_sample: bool,
    ) -> torch.Tensor:
        """New tokens from backbone outputs hidden (B', M, C) -> (B, M, D) latents or (B, M) ids."""
        batch = hidden.shape[0] // 2 if guided else hidden.shape[0]
        if guided and scale == 1.0:  # e.g. the first iteration of the linear schedule: the conditional rows only
            hidden, guided = hidden[:batch], False
        count = hidden.shape[1]
        if self.config.is_continuous:
            condition = hidden.reshape(-1, hidden.shape[-1])  # (B' * M, C): conditional rows first
            new = ddpm_sample(
                lambda x, t: self.diffusion_head(x, t, condition),
                (batch * count, self.config.token_dim),
                scheduler,
                diffusion_steps,
                generator,
                temperature,
                scale,
                device=hidden.device,
                dtype=hidden.dtype,
            )
            return new.view(batch, count, -1)
        logits = self.lm_head(hidden).float()  # (B', M, V)
        if guided:
            logits = apply_guidance(logits, scale)
        flat = logits.reshape(batch * count, -1)
        if processors:
            flat = processors(None, flat)
        return sample_tokens(flat, generator, do_sample).view(batch, count)

    @torch.no_grad()
    def sample_image_tokens(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        num_diffusion_steps: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        generator: torch.Generator | None = None,
        scheduler: DiffusionHeadScheduler | None = None,
        callback=None,
        progress_bar=None,
    ) -> torch.Tensor:
        """Generate image tokens for the captions.

        Args:
            input_ids, attention_mask: (B, S) captions (from the processor).
            negative_input_ids, negative_attention_mask: (B or 1, S) unconditional captions, required when
                `guidance_scale != 1` (the processor's encoding of '' for plain classifier-free guidance).
            num_inference_steps: random order: iterations (default 64 as the paper, or N when smaller; at most N); raster order: must be None or N.
            guidance_scale, guidance_schedule: classifier-free guidance, "constant" or "linear" (1 at the first
                iteration up to `guidance_scale` at the last).
            temperature: continuous: noise scale of the diffusion head's reverse steps (MAR); discrete: softmax
                temperature.
            num_diffusion_steps: reverse steps of the diffusion head per token (default `config.num_diffusion_steps`).
            top_k, top_p, min_p, do_sample: discrete only (transformers semantics).
            generator: the only source of randomness (orders, noise, draws).
            scheduler: the head's DDPM scheduler (default: `self.scheduler`, built from the config).
            callback: `callback(i, tokens)` after each iteration; `tokens` as returned, unknown ones zero.

        Returns:
            (B, N, D) latent tokens (continuous) or (B, N) ids (discrete), in raster order.
        """
        c = self.config
        bad_temperature = isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0
        if c.is_continuous and bad_temperature:  # the head's temperature may be 0 (the mean path)
            raise ValueError(f"`temperature` must be a number >= 0 for continuous Fluid, got {temperature!r}.")
        validate_sampling_args(
            1.0 if c.is_continuous else temperature, top_k, top_p, min_p, guidance_scale, guidance_schedule
        )
        if c.is_continuous and any(v is not None for v in (top_k, top_p, min_p)):
            raise ValueError(
                "`top_k` / `top_p` / `min_p` apply to discrete Fluid only; continuous Fluid uses `temperature`."
            )
        if c.is_continuous and not do_sample:
            raise ValueError(
                "`do_sample=False` applies to discrete Fluid only; use `temperature=0` for the head's mean path."
            )
        n = c.num_image_tokens
        if c.is_causal:
            if num_inference_steps not in (None, n):
                raise ValueError(
                    f"Raster-order Fluid draws one token per step: `num_inference_steps` must be None or {n}, got "
                    f"{num_inference_steps!r}."
                )
            steps = n
        else:
            steps = min(64, n) if num_inference_steps is None else num_inference_steps
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
                raise ValueError(
                    f"`num_inference_steps` must be an int in [1, {n}] (the image tokens), got {steps!r}."
                )
        diffusion_steps = c.num_diffusion_steps if num_diffusion_steps is None else num_diffusion_steps
        if c.is_continuous:
            scheduler = scheduler if scheduler is not None else self.scheduler
            if isinstance(diffusion_steps, bool) or not isinstance(diffusion_steps, int) or diffusion_steps < 1:
                raise ValueError(f"`num_diffusion_steps` must be a positive int, got {diffusion_steps!r}.")
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        guided = guidance_scale != 1.0
        if guided:
            if negative_input_ids is None:
                raise ValueError(
                    "Guidance needs `negative_input_ids`: the processor's encoding of the negative prompt ('' for "
                    "plain classifier-free guidance)."
                )
            if negative_input_ids.shape[1] != input_ids.shape[1]:
                raise ValueError(
                    f"`negative_input_ids` must have the prompts' length {input_ids.shape[1]}, got "
                    f"{negative_input_ids.shape[1]}."
                )
            if negative_attention_mask is None:
                negative_attention_mask = torch.ones_like(negative_input_ids)
            input_ids = torch.cat([input_ids, negative_input_ids.to(input_ids.device).expand(batch, -1)])
            attention_mask = torch.cat(
                [attention_mask, negative_attention_mask.to(attention_mask.device).expand(batch, -1)]
            )
        text = self.model.encode_text(input_ids, attention_mask)  # once per prompt, both branches
        processors = None if c.is_continuous else build_logits_processor(temperature, top_k, top_p, min_p)
        draw_kwargs = dict(
            generator=generator,
            scheduler=scheduler,
            diffusion_steps=diffusion_steps,
            temperature=temperature,
            processors=processors,
            do_sample=do_sample,
        )
        device = input_ids.device
        if c.is_causal:
            return self._sample_raster(
                text,
                attention_mask,
                batch,
                guided,
                guidance_scale,
                guidance_schedule,
                draw_kwargs,
                callback,
                progress_bar,
            )

        if c.is_continuous:
            tokens = torch.zeros(batch, n, c.token_dim, device=device, dtype=self.dtype)
        else:
            tokens = torch.zeros(batch, n, dtype=torch.long, device=device)
        known = torch.zeros(batch, n, dtype=torch.bool, device=device)
        orders = random_orders(batch, n, generator, device)  # (B, N): position revealed k-th
        revealed = 0
        for step in range(steps):
            # MAR: keep floor(N * cos(pi/2 * (k+1)/K)) masked, at least 1 until the last iteration and at most all
            # but one of the unknown tokens (every iteration reveals at least one while it can)
            still_masked = math.floor(n * cosine_mask_ratio((step + 1) / steps))
            still_masked = 0 if step == steps - 1 else max(1, min(n - revealed - 1, still_masked))
            count = n - still_masked - revealed
            if count > 0:
                embeds = self.model.input_embeddings(tokens, ~known)
                if guided:
                    embeds = torch.cat([embeds, embeds])
                hidden = self.model(
                    inputs_embeds=embeds, attention_mask=attention_mask, encoder_outputs=text, use_cache=False
                ).last_hidden_state  # (B', N, C)
                positions = orders[:, revealed : revealed + count]  # (B, M)
                index = positions.repeat(2, 1) if guided else positions
                selected = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B', M, C)
                scale = guidance_scale_at(guidance_scale, step, steps, guidance_schedule)
                new = self._draw(selected, guided, scale, **draw_kwargs)
                if c.is_continuous:
                    tokens.scatter_(1, positions[..., None].expand(-1, -1, c.token_dim), new.to(tokens.dtype))
                else:
                    tokens.scatter_(1, positions, new)
                known.scatter_(1, positions, True)
                revealed += count
            if callback is not None:
                callback(step, tokens)
            if progress_bar is not None:
                progress_bar.update()
        return tokens

    def _sample_raster(
        self,
        text,
        attention_mask,
        batch,
        guided,
        guidance_scale,
        guidance_schedule,
        draw_kwargs,
        callback,
        progress_bar,
    ) -> torch.Tensor:
        """One token per step with the KV cache: self-attention keys/values appended (preallocated StaticCache),
        cross-attention keys/values computed once."""
        c = self.config
        n = c.num_image_tokens
        input_rows = text.last_hidden_state.shape[0]
        cache = EncoderDecoderCache(StaticCache(config=c, max_cache_len=n), DynamicCache())
        start = self.model.special_embedding.to(self.dtype).expand(input_rows, 1, -1)  # (B', 1, C)

        def forward(embeds: torch.Tensor) -> torch.Tensor:
            return self.model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                encoder_outputs=text,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state[:, -1:]  # (B', 1, C)

        if not c.is_continuous:
            head = self.lm_head

            def step(tokens: torch.Tensor | None) -> torch.Tensor:
                embeds = start if tokens is None else self.model.embed_image_tokens(tokens)
                return head(forward(embeds))[:, 0].float()  # (B', V)

            return autoregressive_sample(
                step,
                batch,
                n,
                logits_processor=draw_kwargs["processors"],
                guidance_scale=guidance_scale,
                guidance_schedule=guidance_schedule,
                do_sample=draw_kwargs["do_sample"],
                generator=draw_kwargs["generator"],
                callback=callback,
                progress_bar=progress_bar,
            )
        tokens = torch.zeros(batch, n, c.token_dim, device=text.last_hidden_state.device, dtype=self.dtype)
        embeds = start
        for i in range(n):
            hidden = forward(embeds)
            scale = guidance_scale_at(guidance_scale, i, n, guidance_schedule)
            new = self._draw(hidden, guided, scale, **draw_kwargs)  # (B, 1, D)
            tokens[:, i : i + 1] = new.to(tokens.dtype)
            embeds = self.model.embed_image_tokens(torch.cat([new, new]) if guided else new)
            if callback is not None:
                callback(i, tokens)
            if progress_bar is not None:
                progress_bar.update()
        return tokens


__all__ = [
    "FluidForConditionalGeneration",
    "FluidModel",
    "FluidOutput",
    "FluidPreTrainedModel",
    "cosine_mask_ratio",
    "random_training_mask",
]
