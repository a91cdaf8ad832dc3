"""Transfusion (Zhou et al. 2024, arXiv 2408.11039): one transformer that predicts the next text token and denoises
image patches.

Sequence layout (one id space, the text vocabulary):

    <s> a red circle </s> <boi> <image> x N <eoi>            caption -> image
    <s> <boi> <image> x N <eoi> a red circle </s>            image -> caption

- Text ids go through `embed_tokens`; each run of N `image_token_id` placeholders is replaced by the patches of one
  image's VAE latent at diffusion timestep t (`image_latents`, `timesteps`), embedded by a linear layer or U-Net down
  blocks with a timestep embedding (`patching_transfusion.py`), plus a learned row + column embedding. Every position
  gets a learned 1-D position (the paper uses RoPE); positions count real tokens only, so left padding is free.
- Attention (section 2.3): causal over the whole sequence, bidirectional among the patches of one image
  (`layers.masks.causal_with_bidirectional_spans`), padded keys hidden.
- Loss (section 2.4): `L = L_LM + lambda * L_DDPM`, lambda = `diffusion_loss_weight` (5). L_LM is the next-token
  cross-entropy on text targets; L_DDPM the mean squared error of the predicted noise (or velocity, with
  `prediction_type="v_prediction"`), averaged per image, then over images. Noise is added to the latent BEFORE
  patchifying (`DDPMScheduler.add_noise`, cosine schedule, 1000 steps).
- The diffusers `AutoencoderKL` is nested as `vae` (the way transformers nests VQ models), frozen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ...layers import AxialPositionalEmbedding, additive_mask, cache_length, run_blocks, transformer_blocks
from ...layers.masks import causal_with_bidirectional_spans, image_span_ids
from ...modeling_utils import (
    StrictLoadingMixin,
    init_transformer_weights,
    output_flags,
    renamed_cache_argument,
    true_positions,
)
from ..image_tokenizers import build_image_tokenizer
from .configuration_transfusion import HIGH_NOISE_POWERS, TransfusionConfig
from .generation_transfusion import TransfusionGenerationMixin
from .patching_transfusion import build_patch_modules


@dataclass
class TransfusionModelOutput(BaseModelOutputWithPast):
    """Hidden states plus `noise_pred` (I, C, h, w): the predicted noise of each image in the input, in order (the
    velocity with `prediction_type="v_prediction"`)."""

    noise_pred: torch.Tensor | None = None


@dataclass
class TransfusionOutput(CausalLMOutputWithPast):
    """[`CausalLMOutputWithPast`] plus the noise prediction and the two unweighted loss terms.

    Args:
        noise_pred: (I, C, h, w) predicted noise (or velocity, per `config.prediction_type`) of every image of the
            batch, in sequence order.
        lm_loss: mean next-token cross-entropy over text targets.
        diffusion_loss: mean over images of the per-image MSE of `noise_pred`.
    """

    noise_pred: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    diffusion_loss: torch.Tensor | None = None


class TransfusionPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = TransfusionConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # `layers.Attention` runs any function of transformers' attention interface, given the causal-with-image-blocks
    # mask as an additive 4-D tensor. Flash attention cannot take such a mask; flex attention has not been tested here.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["cache"]

    @torch.no_grad()
    def _init_weights(self, module):
        init_transformer_weights(module, self.config.initializer_range, owner=self)
        if self.config.position_embedding_init == "sincos_2d" and isinstance(module, nn.Embedding):
            positions = self.base_model.patch_positions  # its row / column tables are visited one by one
            if module is positions.row or module is positions.col:
                positions.init_sincos_(module)


def positions_from_mask(attention_mask: torch.Tensor | None, start: int, batch: int, length: int, device):
    """Position ids of the `length` new positions: the number of real tokens before each one (left padding and
    cached positions included), or `start + arange(length)` without a mask."""
    if attention_mask is None:
        return torch.arange(start, start + length, device=device)[None].expand(batch, -1)
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)[:, -length:]


class TransfusionModel(TransfusionPreTrainedModel):
    """Embeddings (text, patches, positions) + transformer + final LayerNorm + patch head; returns hidden states and
    the noise predicted for every image of the input."""

    def __init__(self, config: TransfusionConfig):
        super().__init__(config)
        hidden = config.hidden_size
        grid = config.patch_grid_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, hidden)
        self.patch_positions = AxialPositionalEmbedding(grid, grid, hidden)
        self.patch_embedding, self.patch_head = build_patch_modules(config)
        self.dropout = nn.Dropout(config.hidden_dropout) if config.hidden_dropout > 0 else None
        self.layers = transformer_blocks(config, glu=config.glu, attention_dropout=config.attention_dropout)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _check_images(
        self, input_ids: torch.Tensor, is_image: torch.Tensor, span_ids: torch.Tensor, latents, start: int
    ) -> int:
        """Number of images in `input_ids`; raises when placeholders, BOI / EOI and `image_latents` disagree. What
        the checks need is read from the device in one transfer (one wait for the accelerator per forward)."""
        config = self.config
        if input_ids.numel() == 0:
            found = [0, 0, 0, 0]
        else:
            given = 0 if latents is None else latents.shape[0]
            # run lengths in a fixed number of bins (ids past `given` share the last), so no count is read first
            ids = span_ids.flatten().clamp(max=given + 1)
            lengths = torch.zeros(given + 2, dtype=torch.long, device=ids.device).scatter_add_(
                0, ids, torch.ones_like(ids)
            )
            starts = is_image & ~F.pad(is_image[:, :-1], (1, 0), value=False)
            ends = is_image & ~F.pad(is_image[:, 1:], (0, 1), value=False)
            # an image run at the very start continues a cached <boi>; one at the very end is still being denoised
            before = F.pad(input_ids[:, :-1], (1, 0), value=config.boi_token_id if start > 0 else -1)
            after = F.pad(input_ids[:, 1:], (0, 1), value=config.eoi_token_id)
            found = torch.stack(
                [
                    span_ids.max(),
                    (lengths[1 : given + 1] != config.num_image_tokens).sum(),
                    (starts & (before != config.boi_token_id)).sum(),
                    (ends & (after != config.eoi_token_id)).sum(),
                ]
            ).tolist()
        num_images, wrong_lengths, unopened, unclosed = found
        if num_images == 0:
            if latents is not None:
                raise ValueError(
                    "`image_latents` / `pixel_values` were given, but `input_ids` has no `image_token_id` "
                    f"({config.image_token_id}) placeholders. Build the inputs with TransfusionProcessor."
                )
            return 0
        expected = (num_images, config.latent_channels, config.latent_size, config.latent_size)
        if latents is None:
            raise ValueError(
                f"`input_ids` holds {num_images} image(s) (runs of `image_token_id`), but no `image_latents` / "
                f"`pixel_values` were given; pass one latent {expected[1:]} per image."
            )
        if tuple(latents.shape) != expected:
            raise ValueError(
                f"`image_latents` must have shape {expected} (one per image run), got {tuple(latents.shape)}."
            )
        if wrong_lengths:
            runs = torch.bincount(span_ids.flatten(), minlength=num_images + 1)[1:]
            raise ValueError(
                f"Every image needs exactly {config.num_image_tokens} `image_token_id` positions; got runs of "
                f"{sorted(set(runs.tolist()))}."
            )
        if unopened:
            raise ValueError(
                f"An image in `input_ids` is not preceded by `boi_token_id` ({config.boi_token_id}); every image must "
                "be written <boi> <image> x N <eoi>."
            )
        if unclosed:
            raise ValueError(
                f"An image in `input_ids` is not followed by `eoi_token_id` ({config.eoi_token_id}); every image must "
                "be written <boi> <image> x N <eoi>."
            )
        return num_images

    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        image_latents: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TransfusionModelOutput | tuple:
        """
        Args:
            input_ids: (B, T) ids of the positions after the cached ones; images as `<boi> <image> x N <eoi>`.
            attention_mask: (B, K) key-padding mask over cached + new positions (1 = real token).
            position_ids: (B, T); default: counted from `attention_mask`.
            cache: a transformers `Cache`.
            image_latents: (I, C, h, w) the (noisy) scaled VAE latent of each image run, in row-major order.
            timesteps: (I,) or a scalar: the diffusion timestep of each image; default 0 (clean images).
            use_cache: create a `DynamicCache` when none is given.
            output_attentions: return each layer's attention weights (B, H, T, K) (needs
                `attn_implementation="eager"`).
            output_hidden_states: return the embeddings and every layer's output (the last one after the final norm).
        """
        config = self.config
        use_cache = use_cache if use_cache is not None else config.use_cache
        output_attentions, output_hidden_states, return_dict = output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if not use_cache:
            cache = None
        elif cache is None:
            cache = DynamicCache(config=config)
        start = cache_length(cache)
        batch, length = input_ids.shape
        device = input_ids.device

        is_image = input_ids == config.image_token_id
        span_ids = image_span_ids(is_image)
        num_images = self._check_images(input_ids, is_image, span_ids, image_latents, start)
        hidden_states = self.embed_tokens(input_ids.masked_fill(is_image, 0))
        patch_state = None
        if num_images:
            if timesteps is None:
                timesteps = torch.zeros(num_images, device=device)
            timesteps = torch.as_tensor(timesteps, device=device).expand(num_images)
            patches, patch_state = self.patch_embedding(image_latents.to(hidden_states.dtype), timesteps)
            patches = patches + self.patch_positions(torch.arange(config.num_image_tokens, device=device))
            hidden_states = hidden_states.masked_scatter(is_image[..., None], patches.to(hidden_states.dtype))

        reachable = None  # a bound on the positions known on the host, so they need not be read from the device
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, start, batch, length, device)
            reachable = start + length if attention_mask is None else attention_mask.shape[-1]
        if (
            length
            and (reachable is None or reachable > config.max_position_embeddings)
            and int(position_ids.max()) >= config.max_position_embeddings
        ):
            raise ValueError(
                f"The sequence reaches position {int(position_ids.max())}, past `max_position_embeddings` "
                f"({config.max_position_embeddings}). Shorten the input or generate fewer tokens."
            )
        hidden_states = hidden_states + self.embed_positions(position_ids)
        if self.dropout is not None:
            hidden_states = self.dropout(hidden_states)

        mask = causal_with_bidirectional_spans(span_ids, start, attention_mask)  # (B, 1, T, K)
        mask = additive_mask(mask, hidden_states.dtype)  # converted once, not in every layer
        stack = run_blocks(
            self.layers,
            hidden_states,
            mask,
            cache,
            norm=self.norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = stack.last_hidden_state

        noise_pred = None
        if num_images:
            where = true_positions(is_image, num_images * config.num_image_tokens)
            image_states = hidden_states.flatten(0, 1)[where].view(
                num_images, config.num_image_tokens, -1
            )  # (I, N, C)
            noise_pred = self.patch_head(image_states, patch_state, timesteps)
        out = TransfusionModelOutput(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=stack.hidden_states,
            attentions=stack.attentions,
            noise_pred=noise_pred,
        )
        return out if return_dict else out.to_tuple()


class TransfusionForConditionalGeneration(TransfusionPreTrainedModel, TransfusionGenerationMixin, GenerationMixin):
    """Transfusion with its LM head and its VAE (`vae`, a diffusers `AutoencoderKL`).

    - `forward(..., labels=...)` is the training objective (noise is added inside, drawn from `generator`).
    - `generate_image_latents` / `generate_images`: text -> image (KV-cached prefix, classifier-free guidance).
    - `generate_text`, or stock `generate()`: text continuation and captioning (pass `pixel_values`).
    - `generate_interleaved`: LM mode that switches to diffusion mode whenever it samples `<boi>`.

    Example:

    ```python
    >>> from hf_t2i import TransfusionForConditionalGeneration, TransfusionProcessor
    >>> model = TransfusionForConditionalGeneration.from_pretrained(path)
    >>> processor = TransfusionProcessor.from_pretrained(path)
    >>> inputs = processor.image_generation_inputs(["a red circle"])  # <s> a red circle </s> <boi>
    >>> pixels = model.generate_images(**inputs, guidance_scale=3.0, num_inference_steps=30)  # (1, 3, H, W)
    >>> caption = processor(images=image, text="")  # <s> <boi> <image> x N <eoi>
    >>> ids = model.generate(**caption, max_new_tokens=20)
    ```
    """

    def __init__(self, config: TransfusionConfig):
        super().__init__(config)
        self.model = TransfusionModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.vae = build_image_tokenizer(config.vae_config)  # frozen
        # The training noise schedule is plain tensors, not parameters or buffers: `from_pretrained` runs `__init__`
        # on the meta device, so it is built on the CPU explicitly (`add_noise` moves it to the latents' device).
        with torch.device("cpu"):
            self.noise_scheduler = DDPMScheduler(**config.scheduler_config())
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    # -- VAE ----------------------------------------------------------------------------------------------------------
    @property
    def _vae_factors(self) -> tuple[float, float]:
        vae_config = self.vae.config
        return float(vae_config.scaling_factor), float(getattr(vae_config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(I, 3, H, W) pixels in [-1, 1] -> (I, C, h, w) scaled latents (the posterior mean: deterministic)."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"`pixel_values` must be (num_images, 3, {size}, {size}), got {tuple(pixel_values.shape)}; use the "
                "processor, which resizes images to the model's `image_size`."
            )
        scale, shift = self._vae_factors
        latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.mode()
        return (latents - shift) * scale

    @torch.no_grad()
    def decode_image_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents (Transfusion's image tokens before patchifying) -> (B, 3, H, W) pixels in
        [-1, 1], float32 whatever the model's dtype (as the other families' decoders). The same name as theirs, so a
        pipeline decodes any prior alike."""
        scale, shift = self._vae_factors
        return self.vae.decode(latents.to(self.vae.dtype) / scale + shift).sample.float().clamp(-1, 1)

    # -- forward ------------------------------------------------------------------------------------------------------
    def restrict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Ids that are never sampled in LM mode (the image placeholder, `<eoi>`, which the model appends after an
        image itself, and the pad) get the lowest finite logit (finite so `generate()`'s guidance stays free of
        `inf - inf`)."""
        config = self.config
        banned = [config.image_token_id, config.eoi_token_id]
        if config.pad_token_id is not None and config.pad_token_id not in (config.eos_token_id, config.bos_token_id):
            banned.append(config.pad_token_id)
        logits = logits.clone()
        logits[..., banned] = torch.finfo(logits.dtype).min
        return logits

    def sample_training_noise(
        self,
        image_latents: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        timestep_limits: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, noise): t ~ U{0 .. limit - 1} per image (limit = `num_train_timesteps`, or
        `timestep_limits` for the paper's noise limiting of images that precede their caption; in training with
        `config.timestep_sampling` "high_noise", t = floor(limit * sqrt(u)) instead, and floor(limit * u ** (1/3)) with
        "high_noise_quadratic"), eps ~ N(0, I),
        x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps on the latent, before patchifying (section 2.4)."""
        num_images, device = image_latents.shape[0], image_latents.device
        if timesteps is not None:
            timesteps = torch.as_tensor(timesteps)
            steps = self.config.num_train_timesteps
            if timesteps.is_floating_point() or ((timesteps < 0) | (timesteps >= steps)).any():
                raise ValueError(
                    f"`timesteps` of the training objective must be integers in [0, {steps}) (`num_train_timesteps`), "
                    f"got {timesteps.tolist()}; leave them unset to draw them."
                )
        else:
            limits = torch.full((num_images,), self.config.num_train_timesteps, device=device)
            if timestep_limits is not None:
                limits = timestep_limits.to(device).clamp(1, self.config.num_train_timesteps)
            gen_device = generator.device if generator is not None else device
            uniform = torch.rand(num_images, generator=generator, device=gen_device).to(device)
            if self.training and self.config.timestep_sampling != "uniform":
                # u ** (1 / k) has density k * u ** (k - 1) on [0, 1): 2u for "high_noise", 3u^2 for the quadratic one
                uniform = uniform.pow(1.0 / HIGH_NOISE_POWERS[self.config.timestep_sampling])
            timesteps = (uniform * limits).long().clamp_(max=self.config.num_train_timesteps - 1)
        if noise is None:
            noise = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=image_latents.dtype)
        noisy = self.noise_scheduler.add_noise(image_latents, noise, timesteps.to(device))
        return noisy, timesteps.to(device), noise

    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        pixel_values: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        noise: torch.Tensor | None = None,
        timestep_limits: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TransfusionOutput | tuple:
        """
        Args:
            input_ids: (B, T) ids after the cached positions (see the module docstring).
            attention_mask: (B, K) key-padding mask over cached + new positions.
            position_ids: (B, T); default: counted from `attention_mask`.
            cache: a transformers `Cache`.
            pixel_values: (I, 3, H, W) images in [-1, 1], encoded by the VAE; or give `image_latents`.
            image_latents: (I, C, h, w) scaled latents. Without `labels` they are used as given, at `timesteps`
                (default 0: clean images, e.g. to caption them). With `labels` they are the CLEAN latents of the
                training objective and noise is added here.
            timesteps: (I,) diffusion timesteps (training: drawn uniformly when not given).
            labels: (B, T) text targets aligned with `input_ids` (shifted inside), -100 = ignored (image
                placeholders, `<eoi>`, pads). Turns on the training objective.
            noise: (I, C, h, w) the training noise (default: drawn from `generator`).
            timestep_limits: (I,) exclusive upper bound of each image's training timestep (noise limiting).
            generator: source of the training timesteps and noise.
            use_cache: return the cache.
            logits_to_keep: compute logits only for the last `logits_to_keep` positions (0 = all).
            output_attentions, output_hidden_states: as in [`TransfusionModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values is not None and image_latents is not None:
            raise ValueError("Pass either `pixel_values` or `image_latents`, not both.")
        if pixel_values is not None:
            image_latents = self.encode_images(pixel_values)
        training = labels is not None
        target = None
        if training and image_latents is not None:
            clean = image_latents
            image_latents, timesteps, noise = self.sample_training_noise(
                image_latents, timesteps, noise, timestep_limits, generator
            )
            target = noise
            if self.config.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            image_latents=image_latents,
            timesteps=timesteps,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        loss = lm_loss = diffusion_loss = logits = None
        if training:
            loss, lm_loss, diffusion_loss, logits = self.loss(hidden, labels, outputs.noise_pred, target)
        else:
            logits = self.restrict_logits(self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden))
        out = TransfusionOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            noise_pred=outputs.noise_pred,
            lm_loss=lm_loss,
            diffusion_loss=diffusion_loss,
        )
        return out if return_dict else out.to_tuple()

    def loss(
        self, hidden: torch.Tensor, labels: torch.Tensor, noise_pred: torch.Tensor | None, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`L_LM + lambda * L_DDPM` (section 2.4); `target` is the noise, or the velocity with `prediction_type`
        "v_prediction". Logits are computed only at positions with a text target (the LM head over N image positions
        would be wasted work); they are returned flat, (num_targets, V)."""
        if labels.shape != hidden.shape[:2]:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(hidden.shape[:2])}, got {tuple(labels.shape)}."
            )
        targets = labels[:, 1:]
        where = true_positions(targets != -100)  # the one read from the device: the number of text targets
        logits = self.lm_head(hidden[:, :-1].flatten(0, 1)[where])  # (num_targets, V)
        zero = hidden.new_zeros((), dtype=torch.float32)
        lm_loss = F.cross_entropy(logits.float(), targets.flatten()[where]) if where.numel() else zero
        diffusion_loss = zero
        if noise_pred is not None:
            per_image = (noise_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (I,)
            diffusion_loss = per_image.mean()
        loss = lm_loss + self.config.diffusion_loss_weight * diffusion_loss
        return loss, lm_loss, diffusion_loss, logits

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, attention_mask=None, pixel_values=None, image_latents=None, **kwargs
    ):
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, attention_mask=attention_mask, **kwargs)
        # the 2-D padding mask, not generate()'s 4-D causal one: the image blocks are built in `forward`
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        inputs.pop("position_ids", None)  # counted from the mask in `forward`
        first = cache_length(cache) == 0
        inputs["pixel_values"] = pixel_values if first else None
        inputs["image_latents"] = image_latents if first else None
        return inputs


__all__ = [
    "TransfusionForConditionalGeneration",
    "TransfusionModel",
    "TransfusionModelOutput",
    "TransfusionOutput",
    "TransfusionPreTrainedModel",
]
