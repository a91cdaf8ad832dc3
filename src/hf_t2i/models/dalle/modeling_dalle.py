"""The DALL-E prior (Ramesh et al. 2021, section 2.2): a decoder-only transformer over `[text ; image tokens]`.

Token layout (one id space):

    position:  0 ............. L-1 | L ........................ L+N-1
    token:     text BPE ids (pads) | text_vocab_size + image code
    predicts:  next text token ... | first image token ... (last position predicts nothing)

- Each padded text position has its own learned embedding (`text_pad_embeddings`), so the text context is always
  exactly `L = text_seq_len` long and needs no padding mask.
- Text positions use a learned 1-D embedding; image positions a learned row + column embedding. With
  `position_embedding_type="rotary"` (DALLE-pytorch's default) none is added: every layer rotates its queries, keys
  and values instead (`dalle_rotary_angles`).
- With `shift_tokens=True` (DALLE-pytorch's other default) each sub-layer's normalised input takes some channels
  from the previous text position, or from the image token above and to the left (`token_shift`); the cache then
  keeps the last image row of those inputs next to the keys and values.
- Attention follows `config.attention_types`: every image token sees the whole text; among image tokens the layer's
  pattern (full / row / column / conv, or DALLE-pytorch's axial_row / conv_corner) applies
  (`layers.masks.sparse_image_mask`).
- Loss (section 2.2): `text_loss_weight * CE(text) + image_loss_weight * CE(image)`, 1/8 and 7/8 by default.
- Logits at positions whose next token is an image token are restricted to image ids (and text positions to text
  ids; the others get the lowest finite logit), so stock `generate()` can only emit image tokens after the text.
  Its `generation_config` asks for exactly one image (`generation.image_generation_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, StaticCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ...generation import (
    AutoregressiveDecoder,
    ClassifierFreeGuidance,
    ImageGenerationMixin,
    decode_autoregressive,
    image_generation_config,
)
from ...layers import (
    AxialPositionalEmbedding,
    additive_mask,
    cache_length,
    run_blocks,
    slice_mask,
    sparse_image_mask,
    transformer_blocks,
)
from ...modeling_utils import (
    StrictLoadingMixin,
    init_transformer_weights,
    output_flags,
    outside_range,
    renamed_cache_argument,
)
from ..image_tokenizers import DalleDVAE, DallePytorchDVAE, build_image_tokenizer
from .configuration_dalle import DalleConfig
from .token_shift import DalleTokenShift


@dataclass
class DalleCausalLMOutput(CausalLMOutputWithPast):
    """[`CausalLMOutputWithPast`] plus the two weighted terms of the loss.

    Args:
        text_loss: mean cross-entropy over text targets (unweighted; 0 when the labels hold none).
        image_loss: mean cross-entropy over image targets (unweighted; 0 when the labels hold none).
    """

    text_loss: torch.Tensor | None = None
    image_loss: torch.Tensor | None = None


@dataclass
class DalleGenerationState:
    """What raster decoding keeps between steps.

    Args:
        prefix: (B', L) text ids; under guidance the conditional rows, then the unconditional ones.
        cache: the preallocated KV cache of the whole context.
    """

    prefix: torch.Tensor
    cache: StaticCache


def dalle_rotary_angles(text_length: int, grid_size: int, head_dim: int) -> torch.Tensor:
    """The rotary angles of every position of `[text ; image raster]` in DALLE-pytorch's layout (its `Transformer`
    with `rotary_emb=True`, the `pos_emb` it saves), for `layers.attention.apply_rotary`.

    Each head rotates three groups of `g = head_dim // 3` channels (rounded down to pairs; the rest pass unchanged),
    each angle repeated for the two channels of its pair:

    - text: 1-D frequencies `10000 ** (-2i / g)` times the position: 0, 1, ... for the text, 8192 for every image
      position (far from all text);
    - image row and image column: "pixel" frequencies `pi * linspace(1, 5, g // 2)` times the row / column mapped
      to [-1, 1] (`linspace(-1, 1, grid_size)`); text positions sit at -10 in both.

    Returns:
        (S, R) float32 angles, S = text_length + grid_size ** 2, R = 6 * (g // 2).
    """
    group = head_dim // 3
    text_freqs = 1.0 / (10000 ** (torch.arange(0, group, 2)[: group // 2].float() / group))  # (g/2,)
    pixel_freqs = torch.linspace(1.0, 5.0, group // 2) * math.pi  # (g/2,)
    num_image = grid_size**2
    text_positions = torch.cat([torch.arange(text_length).float(), torch.full((num_image,), 8192.0)])  # (S,)
    axis = torch.linspace(-1, 1, grid_size)
    outside = torch.full((text_length,), -10.0)
    rows = torch.cat([outside, axis.repeat_interleave(grid_size)])  # (S,) raster index r * W + c -> row r
    cols = torch.cat([outside, axis.repeat(grid_size)])  # (S,) -> column c
    angles = [
        p[:, None] * f[None] for p, f in ((text_positions, text_freqs), (rows, pixel_freqs), (cols, pixel_freqs))
    ]
    return torch.cat(angles, dim=-1).repeat_interleave(2, dim=-1)  # (S, R): each angle for both channels of a pair


class DallePreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = DalleConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # `layers.Attention` runs any function of transformers' attention interface, given the sparse masks as additive
    # 4-D tensors. Flash attention cannot take such masks; flex attention has not been tested here.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["cache"]

    @torch.no_grad()
    def _init_weights(self, module):
        init_transformer_weights(
            module, self.config.initializer_range, owner=self, nested=(DalleDVAE, DallePytorchDVAE)
        )


class DalleModel(DallePreTrainedModel):
    """Embeddings + sparse-attention transformer + final LayerNorm; returns hidden states."""

    def __init__(self, config: DalleConfig):
        super().__init__(config)
        hidden = config.hidden_size
        grid = config.image_grid_size
        self.rotary = config.position_embedding_type == "rotary"
        self.text_embeddings = nn.Embedding(config.text_vocab_size, hidden)
        self.text_pad_embeddings = nn.Embedding(config.text_seq_len, hidden)
        self.image_embeddings = nn.Embedding(config.image_vocab_size, hidden)
        if not self.rotary:
            self.text_position_embeddings = nn.Embedding(config.text_seq_len, hidden)
            self.image_position_embeddings = AxialPositionalEmbedding(grid, grid, hidden)
        self.dropout = nn.Dropout(config.hidden_dropout) if config.hidden_dropout > 0 else None
        self.layers = transformer_blocks(
            config,
            glu=config.glu,
            attention_dropout=config.attention_dropout,
            sandwich_norm=config.sandwich_norm,
            layer_scale_init=config.layer_scale_init,
            rotate_values=self.rotary,
        )
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self._masks: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._rotary: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_embeddings = value

    def sparse_mask(self, attention_type: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The additive (S, S) mask of one attention type over the whole context, built once per device and dtype."""
        key = (attention_type, device, dtype)
        if key not in self._masks:
            grid = self.config.image_grid_size
            mask = sparse_image_mask(
                attention_type, self.config.text_seq_len, grid, grid, self.config.conv_kernel_size, device
            )
            self._masks[key] = additive_mask(mask, dtype)
        return self._masks[key]

    def rotary_embeddings(
        self, start: int, length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)`, each (length, R), of positions `start .. start + length - 1` (`position_embedding_type=
        "rotary"`); the whole table is built once per device and dtype."""
        key = (device, dtype)
        if key not in self._rotary:
            config = self.config
            head_dim = config.hidden_size // config.num_attention_heads
            angles = dalle_rotary_angles(config.text_seq_len, config.image_grid_size, head_dim).to(device)
            self._rotary[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        cos, sin = self._rotary[key]
        return cos[start : start + length], sin[start : start + length]

    def embed(self, input_ids: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T) ids at positions `start .. start + T - 1` -> (B, T, C) input embeddings."""
        config = self.config
        length = input_ids.shape[1]
        text_len = config.text_seq_len
        context = text_len + config.num_image_tokens
        if start + length > context:
            raise ValueError(f"Positions {start}..{start + length - 1} exceed the context of {context} tokens.")
        num_text = max(0, min(text_len - start, length))
        parts = []
        if num_text:
            text_ids = input_ids[:, :num_text]
            if length > 1 and outside_range(text_ids, config.text_vocab_size):
                raise ValueError(
                    f"Text positions 0..{text_len - 1} of `input_ids` must hold text ids in [0, {config.text_vocab_size})."
                )
            positions = torch.arange(start, start + num_text, device=input_ids.device)
            tokens = self.text_embeddings(text_ids)
            pads = self.text_pad_embeddings(positions)[None].expand_as(tokens)
            tokens = torch.where((text_ids == config.text_pad_token_id)[..., None], pads, tokens)
            parts.append(tokens if self.rotary else tokens + self.text_position_embeddings(positions))
        if num_text < length:
            image_ids = input_ids[:, num_text:] - config.text_vocab_size
            if length > 1 and outside_range(image_ids, config.image_vocab_size):
                raise ValueError(
                    f"Image positions of `input_ids` must hold ids in [{config.text_vocab_size}, {config.vocab_size})."
                )
            first = start + num_text - text_len
            tokens = self.image_embeddings(image_ids)
            if not self.rotary:
                positions = torch.arange(first, first + image_ids.shape[1], device=input_ids.device)
                tokens = tokens + self.image_position_embeddings(positions)
            parts.append(tokens)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """
        Args:
            input_ids: (B, T) ids of the positions after the cached ones.
            attention_mask: optional (B, K) key-padding mask (1 = attend) over cached + new positions; DALL-E
                itself never needs one (pads are learned tokens).
            cache: a transformers `Cache` (`DynamicCache` or a preallocated `StaticCache`).
            use_cache: create a `DynamicCache` when none is given.
            output_attentions: return each layer's attention weights (B, H, T, K), its sparse mask applied (needs
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
        if config.shift_tokens:
            DalleTokenShift.check_cache(cache, config.num_hidden_layers)
        start = cache_length(cache)
        length = input_ids.shape[1]
        keys = start + length  # the positions cached after this call: what the masks cover (see `slice_mask`)
        hidden_states = self.embed(input_ids, start)
        if self.dropout is not None:
            hidden_states = self.dropout(hidden_states)

        masks = {}
        for attention_type in set(config.attention_types):
            mask = self.sparse_mask(attention_type, input_ids.device, hidden_states.dtype)
            mask = slice_mask(mask, start, length, keys)  # (1, 1, T, K)
            if attention_mask is not None:
                padding = attention_mask.bool()[:, :keys]
                if padding.shape[1] < keys:  # positions past the mask's end are valid
                    padding = F.pad(padding, (0, keys - padding.shape[1]), value=True)
                mask = mask.masked_fill(~padding[:, None, None, :], float("-inf"))
            masks[attention_type] = mask

        rotary = self.rotary_embeddings(start, length, input_ids.device, hidden_states.dtype) if self.rotary else None
        token_shift = None
        if config.shift_tokens:
            token_shift = DalleTokenShift(start, config.text_seq_len, config.image_grid_size, cache)
        stack = run_blocks(
            self.layers,
            hidden_states,
            [masks[attention_type] for attention_type in config.attention_types],
            cache,
            norm=self.norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            position_embeddings=rotary,
            token_shift=token_shift,
        )
        out = BaseModelOutputWithPast(
            last_hidden_state=stack.last_hidden_state,
            cache=cache,
            hidden_states=stack.hidden_states,
            attentions=stack.attentions,
        )
        return out if return_dict else out.to_tuple()


class DalleForConditionalGeneration(DallePreTrainedModel, ImageGenerationMixin):
    """The DALL-E prior with its LM head and its image tokenizer (`vqmodel`, a [`DalleDVAE`], or a
    [`DallePytorchDVAE`] in converted DALLE-pytorch checkpoints).

    Example:

    ```python
    >>> from hf_t2i import DalleForConditionalGeneration, DalleProcessor
    >>> model = DalleForConditionalGeneration.from_pretrained(path)
    >>> processor = DalleProcessor.from_pretrained(path)
    >>> text = processor(text=["a red circle"], return_tensors="pt").input_ids  # (1, L)
    >>> ids = model.generate(text, top_k=64)  # (1, L + N), image ids offset by text_vocab_size
    >>> pixels = model.decode_image_tokens(model.image_codes_from_generated(ids))  # (1, 3, H, W) in [-1, 1]
    ```

    `generate()` samples one image by default (the `generation_config`); `guidance_scale=s` guides it against the
    empty caption (`generation_config.unconditional_input_ids`) or `negative_prompt_ids`.
    """

    def __init__(self, config: DalleConfig):
        super().__init__(config)
        self.model = DalleModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.vqmodel = build_image_tokenizer(config.vq_config)
        self.generation_config = image_generation_config(config.num_image_tokens)  # one image per `generate()`
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.text_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    # -- token layout helpers ---------------------------------------------------------------------------------------
    def build_sequence(self, input_ids: torch.Tensor, image_token_ids: torch.Tensor) -> torch.Tensor:
        """Text ids (B, L) and image codes (B, N) -> one (B, L + N) sequence of model ids."""
        return torch.cat([input_ids, image_token_ids + self.config.text_vocab_size], dim=1)

    def restrict_logits(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        """Give the ids that cannot come next (text ids after the text, image ids inside it) the lowest finite
        logit. Finite rather than -inf so that `generate()`'s classifier-free guidance, which subtracts log-softmaxes,
        stays free of `inf - inf`.

        logits: (B, T, V) for positions `start .. start + T - 1`.
        """
        positions = torch.arange(start, start + logits.shape[1], device=logits.device)
        next_is_image = positions >= self.config.text_seq_len - 1  # (T,)
        is_image_id = torch.arange(logits.shape[-1], device=logits.device) >= self.config.text_vocab_size  # (V,)
        return logits.masked_fill(next_is_image[:, None] != is_image_id[None, :], torch.finfo(logits.dtype).min)

    @torch.no_grad()
    def image_codes_from_generated(self, generated_ids: torch.Tensor) -> torch.Tensor:
        """`generate()`'s (B, L + N) output -> the (B, N) image codes in [0, image_vocab_size): the text part is
        dropped and the image ids' offset (`text_vocab_size`, see the module docstring) removed."""
        codes = generated_ids[:, self.config.text_seq_len :] - self.config.text_vocab_size
        if codes.shape[1] != self.config.num_image_tokens or (codes.numel() and codes.min() < 0):
            raise ValueError(
                f"`generated_ids` must be `generate()` output of shape (B, {self.config.text_seq_len} + "
                f"{self.config.num_image_tokens}) whose image part holds image ids, got {tuple(generated_ids.shape)}."
            )
        return codes

    def decode_image_tokens(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) image codes in [0, image_vocab_size) -> (B, 3, H, W) pixels in [-1, 1]. For `generate()` output,
        take the codes with `image_codes_from_generated` first."""
        if outside_range(image_token_ids, self.config.image_vocab_size):
            raise ValueError(
                f"`image_token_ids` must be image codes in [0, {self.config.image_vocab_size}), got values in "
                f"[{int(image_token_ids.min())}, {int(image_token_ids.max())}]; for `generate()` output use "
                "`model.image_codes_from_generated(ids)`."
            )
        return self.vqmodel.decode(image_token_ids)

    # -- forward ----------------------------------------------------------------------------------------------------
    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DalleCausalLMOutput | tuple:
        """
        Args:
            input_ids: (B, T) model ids (see the module docstring) after the cached positions.
            attention_mask: optional (B, K) key-padding mask.
            cache: a transformers `Cache`.
            labels: (B, T) targets aligned with `input_ids` (shifted inside); -100 is ignored. Usually `input_ids`.
            use_cache: return the cache.
            logits_to_keep: compute logits only for the last `logits_to_keep` positions (0 = all).
            output_attentions, output_hidden_states: as in [`DalleModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        start = cache_length(cache) if use_cache else 0
        outputs = self.model(
            input_ids,
            attention_mask,
            cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        first = start + outputs.last_hidden_state.shape[1] - hidden.shape[1]
        logits = self.restrict_logits(self.lm_head(hidden), first)

        loss = text_loss = image_loss = None
        if labels is not None:
            loss, text_loss, image_loss = self.loss(logits, labels, start)
        out = DalleCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            text_loss=text_loss,
            image_loss=image_loss,
        )
        return out if return_dict else out.to_tuple()

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted text + image cross-entropy (paper: 1/8 and 7/8) of next-token predictions: (loss, text loss,
        image loss)."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(logits.shape[:2])}, got {tuple(labels.shape)}."
            )
        config = self.config
        logits, targets = logits[:, :-1].float(), labels[:, 1:]
        # target j sits at position start + 1 + j: the first `split` are text positions, the rest image positions
        split = max(0, min(config.text_seq_len - start - 1, targets.shape[1]))
        text = (logits[:, :split], targets[:, :split], config.text_loss_weight, 0, config.text_vocab_size)
        image = (
            logits[:, split:],
            targets[:, split:],
            config.image_loss_weight,
            config.text_vocab_size,
            config.image_vocab_size,
        )
        total = logits.new_zeros(())
        terms = []
        for part, part_targets, weight, offset, vocab in (text, image):
            # a mean over the targets that are not -100 (0 without any), with nothing read from the device
            valid = part_targets != -100
            shifted = (part_targets - offset).masked_fill(~valid, -100)
            summed = F.cross_entropy(
                part[..., offset : offset + vocab].flatten(0, 1), shifted.flatten(), ignore_index=-100, reduction="sum"
            )
            term = summed / valid.sum().clamp(min=1)
            terms.append(term)
            total = total + weight * term
        return total, terms[0], terms[1]

    # -- image generation (the pipeline runs the loop: generation.AutoregressiveDecoder) --------------------------
    def prepare_image_generation(
        self,
        input_ids: torch.LongTensor,
        negative_input_ids: torch.LongTensor | None = None,
        guidance: ClassifierFreeGuidance | None = None,
    ) -> DalleGenerationState:
        """Check the captions, build the (doubled, under guidance) prefix and preallocate the cache for the whole
        context.

        Args:
            input_ids: (B, L) text ids (from the processor).
            negative_input_ids: (B, L) or (1, L) text of the unconditional branch (the processor's encoding of '' or
                of a negative prompt); required when guidance is on.
            guidance: classifier-free guidance (default: off).
        """
        config = self.config
        guidance = guidance or ClassifierFreeGuidance()
        self.check_caption(input_ids, "input_ids")
        prefix = guidance.double_inputs(input_ids, negative_input_ids)  # (B', L)
        cache = StaticCache(config=config, max_cache_len=config.max_position_embeddings)
        return DalleGenerationState(prefix=prefix, cache=cache)

    def image_generation_step(self, state: DalleGenerationState, previous: torch.Tensor | None) -> torch.Tensor:
        """One step of raster decoding: the prefix when `previous` is None, else the last drawn image codes (B', 1).

        Returns:
            (B', image_vocab_size) logits of the next image code (only the image slice of the LM head is computed).
        """
        offset = self.config.text_vocab_size
        ids = state.prefix if previous is None else previous + offset
        outputs = self.model(ids, cache=state.cache, use_cache=True, return_dict=True)
        hidden = outputs.last_hidden_state[:, -1]  # (B', C)
        return F.linear(hidden, self.lm_head.weight[offset:], self.lm_head.bias[offset:])  # (B', image_vocab)

    @torch.no_grad()
    def sample_image_tokens(
        self,
        input_ids: torch.LongTensor,
        negative_input_ids: torch.LongTensor | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.LongTensor:
        """Draw the image codes of each caption with the package's KV-cached loop, without a pipeline around it
        ([`DallePipeline`] runs the same loop with a progress bar and callbacks).

        Args:
            input_ids, negative_input_ids: as in `prepare_image_generation`.
            guidance_scale, guidance_schedule, temperature, top_k, top_p, min_p, do_sample: see [`SamplingConfig`];
                the sampling ones left unset take the `generation_config`'s values (the checkpoint's own choice).
            generator: the source of randomness.

        Returns:
            (B, N) image codes in `[0, image_vocab_size)`.
        """
        sampling = self.image_sampling_config(
            temperature, top_k, top_p, min_p, do_sample, guidance_scale, guidance_schedule
        )
        state = self.prepare_image_generation(input_ids, negative_input_ids, sampling.guidance)
        decoder = AutoregressiveDecoder(input_ids.shape[0], self.config.num_image_tokens, sampling, generator)
        return decode_autoregressive(lambda previous: self.image_generation_step(state, previous), decoder)

    # -- stock generate() (generation.ImageGenerationMixin) -------------------------------------------------------
    @property
    def image_token_offset(self) -> int:
        return self.config.text_vocab_size

    def check_caption(self, input_ids: torch.Tensor, argument: str) -> None:
        """A (B, text_seq_len) caption, as the processor makes it."""
        if input_ids.ndim != 2 or input_ids.shape[1] != self.config.text_seq_len:
            raise ValueError(
                f"`{argument}` must be (batch, {self.config.text_seq_len}) text ids, got {tuple(input_ids.shape)}. "
                "Use the processor, which pads every caption to the text context."
            )

    def check_generate_inputs(self, input_ids: torch.Tensor | None, guided: bool, kwargs: dict[str, Any]) -> None:
        if input_ids is None:
            return
        if guided or input_ids.ndim != 2 or input_ids.shape[1] < self.config.text_seq_len:
            # unguided, generate() may also continue after some image tokens
            self.check_caption(input_ids, "input_ids")

    def unconditional_image_step(self, negative_prompt_ids, negative_prompt_attention_mask=None):
        if negative_prompt_attention_mask is not None:
            raise ValueError(
                "DALL-E takes no `negative_prompt_attention_mask`: its caption pads are learned tokens, never masked."
            )
        self.check_caption(negative_prompt_ids, "negative_prompt_ids")
        return partial(self.image_generation_step, self.prepare_image_generation(negative_prompt_ids))

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, attention_mask=attention_mask, **kwargs)
        # `generate()` builds a 4-D *causal* mask for preallocated caches (from no mask at all when the prompt has no
        # padding); the sparse masks are built in `forward` instead, so keep the plain 2-D padding mask, or none.
        inputs["attention_mask"] = attention_mask
        return inputs


__all__ = [
    "dalle_rotary_angles",
    "DalleCausalLMOutput",
    "DalleForConditionalGeneration",
    "DalleGenerationState",
    "DalleModel",
    "DallePreTrainedModel",
]
