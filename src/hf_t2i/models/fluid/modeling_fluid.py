"""Fluid (Fan et al. 2024): masked / autoregressive image-token prediction with continuous (per-token diffusion head)
or discrete (cross-entropy) tokens, in random or raster order, conditioned on text through cross-attention.

Token layout (N = grid * grid image tokens, raster positions 0..N-1, each with a learned position embedding):

    random order (bidirectional):  input i = [MASK] if masked else embed(t_i);  output i predicts t_i (masked ones)
    raster order (causal):         input i = [START] if i == 0 else embed(t_(i-1));  output i predicts t_i

- Continuous tokens: `AutoencoderKL` latents (nested as `vae`), `(z - shift_factor) * scaling_factor`, grouped
  `patch_size` x `patch_size` (`layers.patchify`). The head is `layers.DiffusionHead` conditioned on the backbone's
  output at the token's position, trained with the DDPM epsilon loss (optionally Min-SNR-γ weighted, `snr_gamma`),
  `diffusion_batch_mul` noise draws per token.
- Discrete tokens: ids of a nested VQ tokenizer (`vqmodel`: `DalleDVAE` or `ViTVQGAN`), a linear head, cross-entropy.
- Training mask (random order, section 3): ratio `cos(pi / 2 * r)`, `r ~ U(0, 1)`, at least one token masked.
- Sampling (random order): a random permutation per image (from the `generator`) fixes the order; iteration `k` of
  `K` reveals tokens until `N * cos(pi / 2 * (k + 1) / K)` stay masked (MAR / MUSE). Classifier-free guidance runs the
  conditional and unconditional rows as one doubled batch, on the head's epsilon (continuous) or on logits (discrete).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from ...generation import rand_like_on
from ...generation.masked import cosine_training_mask
from ...layers import (
    additive_mask,
    cache_length,
    causal_mask,
    patchify,
    run_blocks,
    sincos_2d_embedding,
    slice_mask,
    transformer_blocks,
    unpatchify,
)
from ...layers.diffusion_head import DiffusionHead, DiffusionHeadScheduler, build_ddpm_scheduler
from ...layers.diffusion_head import diffusion_loss as ddpm_loss
from ...layers.text_encoder import TextEncoder, build_text_encoder, padding_mask
from ...layers.transformer import TransformerBlock
from ...modeling_utils import (
    StrictLoadingMixin,
    init_transformer_weights,
    output_flags,
    outside_range,
    renamed_cache_argument,
    true_positions,
)
from ..image_tokenizers import build_image_tokenizer
from .configuration_fluid import FluidConfig, MarConfig
from .generation_fluid import FluidGenerationMixin


@dataclass
class FluidModelOutput(ModelOutput):
    """Backbone outputs.

    Args:
        last_hidden_state: (B, T, C) at the image positions.
        cache: the cache (raster order).
        encoder_last_hidden_state: (B, S, C) the text states.
        hidden_states: with `output_hidden_states`, the backbone's input and every block's output, the last after the
            final norm (`num_hidden_layers + 1` tensors; class-conditional: the MAE decoder's, buffer included).
        attentions, cross_attentions: with `output_attentions`, each block's self-attention (B, H, T, T) and
            cross-attention (B, H, T, S) weights.
        encoder_hidden_states, encoder_attentions: the same for the text encoder (class-conditional: the MAE
            encoder, over the buffer and the visible tokens).
    """

    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class FluidOutput(ModelOutput):
    """Outputs of [`FluidForConditionalGeneration`].

    Args:
        loss: mean DDPM epsilon MSE (continuous) or cross-entropy (discrete) over the predicted tokens.
        logits: (B, N, V) image-code logits (discrete only).
        last_hidden_state: (B, N, C) backbone outputs, the diffusion head's conditions.
        mask: (B, N) float, 1.0 at the tokens the loss is taken on (the masked ones in random order; all in raster),
            0.0 elsewhere (the convention of transformers' masked-image models, e.g. ViTMAE); `out.mask.bool()`
            selects them.
        cache: the cache (raster order).
        hidden_states, attentions, cross_attentions, encoder_hidden_states, encoder_attentions: as in
            [`FluidModelOutput`], when asked for.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


class FluidImageTokenInputs:
    """Image-token checks and embedding shared by the two backbones (both have `token_embeddings`)."""

    def check_image_tokens(self, image_tokens: torch.Tensor, name: str = "image_tokens", values: bool = True) -> None:
        """Raises unless `image_tokens` are (batch, N, token_dim) float latents (continuous) or (batch, N) integer
        ids, in [0, image_vocab_size) with `values` (the one check that reads the device: callers whose tokens go
        on to [`FluidModel.forward`] leave it to it)."""
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
            if values and outside_range(image_tokens, c.image_vocab_size):
                raise ValueError(f"`{name}` ids must be in [0, {c.image_vocab_size}).")

    def embed_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) latents or (B, T) ids -> (B, T, C)."""
        if self.config.is_continuous:
            return self.token_embeddings(image_tokens.to(self.token_embeddings.weight.dtype))
        return self.token_embeddings(image_tokens)


class FluidPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = FluidConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # `layers.Attention` runs any function of transformers' attention interface, given the causal and padding masks
    # as additive 4-D tensors. Flash attention cannot take such masks; flex attention has not been tested here.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["cache"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, DiffusionHead):
            module.reset_parameters()  # runs after its children: the head keeps its zero-initialised modulations
        elif isinstance(module, FluidModel) and module is self:  # after its children (the position table)
            module.special_embedding.normal_(0.0, std)
            if self.config.position_embedding_init == "sincos_2d":
                grid = self.config.image_grid_size
                table = sincos_2d_embedding(grid, grid, self.config.hidden_size)
                module.position_embeddings.weight.copy_(table.to(module.position_embeddings.weight))
        elif isinstance(module, FluidMAEModel) and module is self:
            for parameter in (
                module.null_class_embedding,
                module.mask_embedding,
                module.encoder_position_embeddings,
                module.position_embeddings,
                module.head_position_embeddings,
            ):
                parameter.normal_(0.0, std)
        else:
            # the image tokenizer and a pretrained text encoder (its weights get loaded) keep their own init
            init_transformer_weights(module, std, owner=self, nested=(PreTrainedModel,))


class FluidModel(FluidImageTokenInputs, FluidPreTrainedModel):
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

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.token_embeddings = value

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

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        """The text encoder's outputs; `kwargs`: its `output_attentions` / `output_hidden_states`."""
        return self.text_encoder(input_ids, attention_mask, **kwargs)

    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FluidModelOutput | tuple:
        """
        Args:
            input_ids, attention_mask: (B, S) caption ids and padding mask (not needed with `encoder_outputs`).
            image_tokens: (B, N, D) latents or (B, N) ids in raster order, turned into inputs by `input_embeddings`.
            mask: (B, N) bool, True = replaced by [MASK] (random order).
            inputs_embeds: (B, T, C) backbone inputs instead of `image_tokens` (the sampling loops).
            position_ids: (B or 1, T) raster positions of the inputs; default: after the cached ones, in order. In
                random order any permutation of the positions gives the same outputs, permuted.
            cache: an `EncoderDecoderCache` (raster order).
            output_attentions: return the attention weights of the text encoder and of the backbone's self- and
                cross-attention (needs `attn_implementation="eager"`).
            output_hidden_states: return the hidden states of the text encoder and of the backbone.
        """
        c = self.config
        output_attentions, output_hidden_states, return_dict = output_flags(
            c, output_attentions, output_hidden_states, return_dict
        )
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
            encoder_outputs = self.encode_text(
                input_ids,
                attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        use_cache = (use_cache if use_cache is not None else c.use_cache) and c.is_causal
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if not use_cache:
            cache = None
        elif cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=c), DynamicCache(config=c))

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
            self_mask = slice_mask(full, start, length)
        text = encoder_outputs.last_hidden_state
        stack = run_blocks(
            self.layers,
            hidden,
            self_mask,
            cache,
            text,
            padding_mask(attention_mask, hidden.dtype),
            norm=self.norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        out = FluidModelOutput(
            last_hidden_state=stack.last_hidden_state,
            cache=cache,
            encoder_last_hidden_state=text,
            hidden_states=stack.hidden_states,
            attentions=stack.attentions,
            cross_attentions=stack.cross_attentions,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return out if return_dict else out.to_tuple()


class FluidMAEModel(FluidImageTokenInputs, FluidPreTrainedModel):
    """Class-conditional backbone with MAR's masked encoder-decoder layout (Li et al. 2024, section 3.3; `models/mar.py`
    of LTH14/mar), used when `config.num_classes` is set.

    Sequence: `buffer_size` buffer positions, then the N image tokens in raster order.

    - encoder: `token_embeddings` (MAR's `z_proj`) of every token, the class embedding copied into the buffer,
      `encoder_position_embeddings` added, `token_embedding_norm` (`z_proj_ln`), then the MASKED TOKENS ARE DROPPED:
      `encoder_layers` blocks read the buffer and the visible tokens only, `encoder_norm`;
    - decoder: `decoder_embeddings` of the encoder's outputs scattered back to their places, [MASK] (`mask_embedding`)
      in the dropped ones, `position_embeddings`, `decoder_layers` blocks, `decoder_norm`; the buffer is removed and
      `head_position_embeddings` added (MAR's `diffusion_pos_embed_learned`): (B, N, C), the diffusion head's
      conditions.

    Rows with different numbers of visible tokens are padded to the longest and the padding masked out of attention
    (MAR itself needs one count per batch).
    """

    config_class = MarConfig
    main_input_name = "class_labels"  # the condition, as the caption `input_ids` is the text-conditional backbone's

    def __init__(self, config: FluidConfig):
        super().__init__(config)
        hidden, positions = config.hidden_size, config.buffer_size + config.num_image_tokens
        self.class_embeddings = nn.Embedding(config.num_classes, hidden)
        self.null_class_embedding = nn.Parameter(torch.zeros(hidden))  # the unconditional class (MAR's `fake_latent`)
        if config.is_continuous:
            self.token_embeddings = nn.Linear(config.token_dim, hidden)
        else:
            self.token_embeddings = nn.Embedding(config.image_vocab_size, hidden)
        self.token_embedding_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.encoder_position_embeddings = nn.Parameter(torch.zeros(positions, hidden))
        self.encoder_layers = nn.ModuleList(
            TransformerBlock(
                hidden,
                config.encoder_attention_heads,
                config.encoder_intermediate_size,
                layer_idx=i,
                activation=config.hidden_act,
                norm_eps=config.layer_norm_eps,
                hidden_dropout=config.hidden_dropout,
                config=config,
            )
            for i in range(config.encoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.decoder_embeddings = nn.Linear(hidden, hidden)
        self.mask_embedding = nn.Parameter(torch.zeros(hidden))
        self.position_embeddings = nn.Parameter(torch.zeros(positions, hidden))
        self.decoder_layers = transformer_blocks(config)
        self.decoder_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.head_position_embeddings = nn.Parameter(torch.zeros(config.num_image_tokens, hidden))
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.token_embeddings = value

    def embed_classes(self, class_labels: torch.Tensor) -> torch.Tensor:
        """(B,) class ids -> (B, C) class embeddings."""
        n = self.config.num_classes
        if class_labels.is_floating_point() or class_labels.ndim != 1:
            raise ValueError(
                f"`class_labels` must be integer ids of shape (batch,), got {class_labels.dtype} of shape "
                f"{tuple(class_labels.shape)}."
            )
        if outside_range(class_labels, n):
            raise ValueError(f"`class_labels` must be in [0, {n}), got {class_labels.tolist()}.")
        return self.class_embeddings(class_labels)

    def forward(
        self,
        class_labels: torch.LongTensor | None = None,
        image_tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        class_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FluidModelOutput | tuple:
        """
        Args:
            class_labels: (B,) class ids (or pass `class_embeds`).
            image_tokens: (B, N, D) latents or (B, N) ids in raster order; the masked ones are never read.
            mask: (B, N) bool, True = masked (dropped from the encoder, predicted); default: none masked.
            class_embeds: (B, C) condition vectors instead of `class_labels` (e.g. the null class for guidance).
            output_attentions: return the attention weights of the encoder and of the decoder (needs
                `attn_implementation="eager"`).
            output_hidden_states: return the hidden states of the encoder (B, V, C) and of the decoder
                (B, buffer_size + N, C).

        Returns:
            [`FluidModelOutput`] with `last_hidden_state` (B, N, C).
        """
        c = self.config
        output_attentions, output_hidden_states, return_dict = output_flags(
            c, output_attentions, output_hidden_states, return_dict
        )
        if image_tokens is None:
            raise ValueError("Pass `image_tokens` (`encode_images(pixel_values)`).")
        self.check_image_tokens(image_tokens)
        batch, n = image_tokens.shape[:2]
        if mask is None:
            mask = torch.zeros(batch, n, dtype=torch.bool, device=image_tokens.device)
        if mask.shape != (batch, n) or mask.dtype != torch.bool:
            raise ValueError(f"`mask` must be bool (batch, {n}), got {tuple(mask.shape)} {mask.dtype}.")
        if class_embeds is None:
            if class_labels is None:
                raise ValueError("Class-conditional Fluid needs `class_labels` (or `class_embeds`).")
            class_embeds = self.embed_classes(class_labels)
        embeds = self.embed_image_tokens(image_tokens)  # (B, N, C)
        hidden_size, buffer = embeds.shape[-1], c.buffer_size
        buffer_embeds = class_embeds.to(embeds.dtype)[:, None].expand(-1, buffer, -1)  # (B, P, C)
        x = torch.cat([buffer_embeds, embeds], dim=1) + self.encoder_position_embeddings  # (B, P + N, C)
        x = self.token_embedding_norm(x)

        # keep the buffer and the visible tokens, in position order, padded to the longest row
        visible = torch.cat([mask.new_ones(batch, buffer), ~mask], dim=1)  # (B, P + N)
        counts = visible.sum(dim=1)
        width = int(counts.max())
        kept = torch.sort((~visible).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # (B, V)
        x = x.gather(1, kept[..., None].expand(-1, -1, hidden_size))  # (B, V, C)
        padded = None if int(counts.min()) == width else torch.arange(width, device=x.device)[None] < counts[:, None]
        key_mask = padding_mask(padded, x.dtype)  # (B, 1, 1, V) or None
        encoder = run_blocks(
            self.encoder_layers,
            x,
            key_mask,
            norm=self.encoder_norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        x = self.decoder_embeddings(encoder.last_hidden_state)  # (B, V, C)

        # scatter back among [MASK]s (padding rows write [MASK] to a masked place)
        mask_embeds = self.mask_embedding.to(x.dtype).expand(batch, buffer + n, -1)  # (B, P + N, C)
        if padded is not None:
            x = torch.where(padded[..., None], x, mask_embeds[:, :width])
        x = mask_embeds.scatter(1, kept[..., None].expand(-1, -1, hidden_size), x) + self.position_embeddings
        decoder = run_blocks(
            self.decoder_layers,
            x,
            norm=self.decoder_norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        x = decoder.last_hidden_state[:, buffer:] + self.head_position_embeddings  # (B, N, C)
        out = FluidModelOutput(
            last_hidden_state=x,
            hidden_states=decoder.hidden_states,
            attentions=decoder.attentions,
            encoder_hidden_states=encoder.hidden_states,
            encoder_attentions=encoder.attentions,
        )
        return out if return_dict else out.to_tuple()


class FluidForConditionalGeneration(FluidGenerationMixin, FluidPreTrainedModel):
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
        self.model = FluidMAEModel(config) if config.is_class_conditional else FluidModel(config)
        self.vae = self.vqmodel = self.diffusion_head = self.lm_head = None
        if config.is_continuous:
            self.diffusion_head = DiffusionHead(
                config.token_dim,
                config.hidden_size,
                config.diffusion_head_width,
                config.diffusion_head_layers,
                frequency_dim=config.diffusion_head_frequency_dim,
                learned_variance=config.diffusion_head_learned_variance,
                norm_affine=config.diffusion_head_norm_affine,
            )
            self.vae = build_image_tokenizer(config.vae_config)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.image_vocab_size)
            self.vqmodel = build_image_tokenizer(config.vq_config)
        self._scheduler = None
        self.post_init()

    def get_encoder(self) -> TextEncoder:
        self._require_text("get_encoder")
        return self.model.text_encoder

    def load_text_encoder(self, path: str) -> None:
        """Load pretrained weights into the (frozen) text encoder, e.g. all-MiniLM-L6-v2 from `minilm_path()`."""
        self._require_text("load_text_encoder")
        self.model.text_encoder.load_pretrained(path)

    def _require_text(self, what: str) -> None:
        if self.config.is_class_conditional:
            raise ValueError(
                f"`{what}`: this Fluid model is class-conditional (`num_classes`) and has no text encoder."
            )

    def image_tokenizer(self) -> nn.Module:
        """The nested `AutoencoderKL` (continuous) or VQ tokenizer (discrete)."""
        return self.vae if self.config.is_continuous else self.vqmodel

    @property
    def scheduler(self) -> DiffusionHeadScheduler:
        """The DDPM schedule the head was trained with (built from the config; continuous only)."""
        if not self.config.is_continuous:
            raise ValueError("Discrete Fluid has no diffusion head, hence no scheduler.")
        if self._scheduler is None:
            c = self.config
            self._scheduler = build_ddpm_scheduler(
                c.num_train_timesteps,
                c.beta_schedule,
                timestep_spacing=c.diffusion_timestep_spacing,
                learned_variance=c.diffusion_head_learned_variance,
            )
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
            snr_gamma=self.config.snr_gamma if self.training else None,  # held-out losses: the plain epsilon-MSE
        )

    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        generator: torch.Generator | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
        class_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> FluidOutput | tuple:
        """
        Args:
            image_tokens: (B, N, D) scaled latent tokens or (B, N) ids (`encode_images`), in raster order.
            mask: (B, N) bool, random order only: the tokens replaced by [MASK] and predicted. Default in training /
                with `return_loss`: drawn from the cosine schedule with `generator`.
            generator: source of the training mask, the class dropout, diffusion timesteps and noise.
            return_loss: compute the loss (needs the full `image_tokens`).
            class_labels: (B,) class ids, class-conditional Fluid only (instead of the text arguments); in training
                each is replaced by the null class with probability `config.class_dropout_prob`.
            output_attentions, output_hidden_states: as in [`FluidModel.forward`] / [`FluidMAEModel.forward`].
            (text and cache arguments as in [`FluidModel.forward`])
        """
        c = self.config
        return_dict = return_dict if return_dict is not None else c.return_dict
        if image_tokens is None:
            raise ValueError("Pass `image_tokens` (`encode_images(pixel_values)`).")
        self.model.check_image_tokens(image_tokens, values=False)  # the model's forward checks the values
        batch, length = image_tokens.shape[:2]
        if c.is_causal:
            if mask is not None:
                raise ValueError("`mask` applies to random-order Fluid only; raster order predicts every token.")
            loss_mask = torch.ones(batch, length, dtype=torch.bool, device=image_tokens.device)
        else:
            if mask is None and return_loss:
                mask = cosine_training_mask(batch, length, generator, image_tokens.device)
            loss_mask = mask
        if c.is_class_conditional:
            if input_ids is not None or encoder_outputs is not None:
                given = "input_ids" if input_ids is not None else "encoder_outputs"
                raise ValueError(f"This Fluid model is class-conditional: pass `class_labels`, not `{given}`.")
            if class_labels is None:
                raise ValueError(
                    f"Pass `class_labels` (batch,) ids in [0, {c.num_classes}) for class-conditional Fluid."
                )
            class_embeds = self.model.embed_classes(class_labels)  # (B, C)
            if class_embeds.shape[0] != batch:
                raise ValueError(
                    f"`class_labels` must hold one label per image: {batch} `image_tokens` rows, got "
                    f"{class_embeds.shape[0]} labels."
                )
            if self.training and c.class_dropout_prob > 0:
                dropped = rand_like_on((batch,), generator, class_embeds.device) < c.class_dropout_prob
                class_embeds = torch.where(dropped[:, None], self.model.null_class_embedding, class_embeds)
            outputs = self.model(
                image_tokens=image_tokens,
                mask=mask,
                class_embeds=class_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        else:
            if class_labels is not None:
                raise ValueError("`class_labels` apply to class-conditional Fluid (`num_classes`); pass `input_ids`.")
            if input_ids is not None and input_ids.shape[0] != batch:
                raise ValueError(
                    f"`input_ids` must hold one caption per image: {batch} `image_tokens` rows, got "
                    f"{input_ids.shape[0]} captions."
                )
            outputs = self.model(
                input_ids,
                attention_mask,
                image_tokens=image_tokens,
                mask=mask,
                position_ids=position_ids,
                encoder_outputs=encoder_outputs,
                cache=cache,
                use_cache=use_cache,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden) if not c.is_continuous else None
        loss = None
        if return_loss and loss_mask is not None:
            if position_ids is not None:
                raise ValueError("The loss reads targets in raster order; leave `position_ids` unset with it.")
            if hidden.shape[1] != length:
                raise ValueError("The loss needs all N positions in one call (no cache offset).")
            where = true_positions(loss_mask)
            loss = self.head_loss(hidden.flatten(0, 1)[where], image_tokens.flatten(0, 1)[where], generator)
        out = FluidOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=hidden,
            mask=None if loss_mask is None else loss_mask.to(hidden.dtype),
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return out if return_dict else out.to_tuple()


class MarForConditionalGeneration(FluidForConditionalGeneration):
    """Class-conditional MAR ([`MarConfig`]): [`FluidMAEModel`] with its diffusion head (continuous tokens) or LM head
    (discrete) and image tokenizer. Generation takes `class_labels` instead of captions; [`FluidPipeline`] drives it.

    Example:

    ```python
    >>> model = MarForConditionalGeneration(MarConfig(num_classes=10))
    >>> tokens = model.sample_image_tokens(class_labels=torch.tensor([3]), num_inference_steps=8)
    >>> pixels = model.decode_image_tokens(tokens)  # (1, 3, H, W) in [-1, 1]
    ```
    """

    config_class = MarConfig
    main_input_name = "class_labels"  # as its backbone's; the text-conditional forward's first argument is `input_ids`

    def forward(
        self,
        class_labels: torch.LongTensor | None = None,
        image_tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_loss: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FluidOutput | tuple:
        """[`FluidForConditionalGeneration.forward`] with the class-conditional arguments only, `class_labels` first
        (`input_ids` / `encoder_outputs` are refused, naming `class_labels`).

        Args:
            class_labels: (B,) class ids; in training each is replaced by the null class with probability
                `config.class_dropout_prob`.
            image_tokens, mask, generator, return_loss, output_attentions, output_hidden_states: as in
                [`FluidForConditionalGeneration.forward`].
        """
        return super().forward(
            class_labels=class_labels,
            image_tokens=image_tokens,
            mask=mask,
            generator=generator,
            return_loss=return_loss,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )


__all__ = [
    "FluidForConditionalGeneration",
    "FluidMAEModel",
    "FluidModel",
    "FluidOutput",
    "FluidPreTrainedModel",
    "MarForConditionalGeneration",
]
