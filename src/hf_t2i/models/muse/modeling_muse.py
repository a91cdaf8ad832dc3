"""Muse (Chang et al. 2023) / MaskGIT (Chang et al. 2022): masked image-token prediction with a bidirectional
transformer over the codes of a VQ tokenizer, conditioned on text through cross-attention.

Token layout (N = grid * grid codes of the nested `vqmodel`, raster positions 0..N-1, V = `image_vocab_size`):

    input i  = [MASK] (id V) if masked else t_i      + position embedding of i (learned or axial)
    output i = logits over the V codes; the loss reads the masked positions only

- Training mask (MaskGIT section 3.1, Muse section 2.4): per image a ratio `cos(pi / 2 * r)`, `r ~ U(0, 1)`, of the
  positions (at least one) chosen at random, replaced by [MASK]; cross-entropy on those positions only. Captions are
  dropped for classifier-free guidance by the training recipe.
- Sampling (MaskGIT section 3.2; `generation_muse.py`): start from all-[MASK]; each of `num_inference_steps`
  iterations predicts every masked token, draws it, and keeps the most confident draws (log-probability plus annealed
  Gumbel noise), so that `N * cos(pi / 2 * (k + 1) / K)` tokens stay masked after iteration k; the others are
  re-masked. `generation.MaskedDecoder` with `ConfidenceOrder` does the bookkeeping; [`MusePipeline`] runs the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from ...generation.masked import cosine_training_mask
from ...layers import AxialPositionalEmbedding, run_blocks, transformer_blocks
from ...layers.text_encoder import TextEncoder, build_text_encoder, padding_mask
from ...modeling_utils import StrictLoadingMixin, init_transformer_weights, output_flags, outside_range, true_positions
from ..image_tokenizers import DiffusersVQConfig, build_image_tokenizer
from .configuration_muse import MuseConfig
from .generation_muse import MuseGenerationMixin
from .modeling_muse_uvit import CLIPTextConditioning, UViTBackbone, UViTHead, init_uvit_weights


@dataclass
class MuseModelOutput(ModelOutput):
    """Backbone outputs.

    Args:
        last_hidden_state: (B, N, C) at the image positions.
        encoder_last_hidden_state: (B, S, C) the text states.
        hidden_states: with `output_hidden_states`, the backbone's input and every block's output, the last after the
            final norm (`num_hidden_layers + 1` tensors).
        attentions, cross_attentions: with `output_attentions`, each block's self-attention (B, H, N, N) and
            cross-attention (B, H, N, S) weights.
        encoder_hidden_states, encoder_attentions: the same for the text encoder.
    """

    last_hidden_state: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MuseOutput(ModelOutput):
    """Outputs of [`MuseForConditionalGeneration`].

    Args:
        loss: mean cross-entropy over the masked positions of the batch.
        logits: (B, N, V) code logits at every position.
        mask: (B, N) float, 1.0 at the positions replaced by [MASK] (the ones the loss reads), 0.0 elsewhere (the
            convention of transformers' masked-image models, e.g. ViTMAE); `out.mask.bool()` selects them.
        encoder_last_hidden_state: (B, S, C) the encoded captions.
        hidden_states, attentions, cross_attentions, encoder_hidden_states, encoder_attentions: as in
            [`MuseModelOutput`], when asked for.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None


class MusePreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    config_class = MuseConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # `layers.Attention` runs any function of transformers' attention interface, given the padding mask as an
    # additive 4-D tensor. Flash attention cannot take such a mask; flex attention has not been tested here.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["TransformerBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        # the VQ tokenizer and a pretrained text encoder (its weights get loaded) keep their own init
        std = self.config.initializer_range
        if self.config.backbone == "uvit" and init_uvit_weights(module, std):
            return
        init_transformer_weights(module, std, owner=self, nested=(PreTrainedModel,))


class MuseModel(MusePreTrainedModel):
    """Text encoder + bidirectional image-token transformer whose blocks cross-attend to the text; returns the hidden
    states at the N image positions."""

    def __init__(self, config: MuseConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.text_encoder = build_text_encoder(config)
        self.token_embeddings = nn.Embedding(config.image_vocab_size + 1, hidden)  # the codes, then [MASK]
        grid = config.image_grid_size
        if config.position_embedding_type == "axial":
            self.position_embeddings = AxialPositionalEmbedding(grid, grid, hidden)
        else:
            self.position_embeddings = nn.Embedding(grid * grid, hidden)
        self.layers = transformer_blocks(config, cross_attention=True)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_encoder(self) -> TextEncoder:
        return self.text_encoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def check_image_token_ids(
        self, image_token_ids: torch.Tensor, name: str = "image_token_ids", values: bool = True
    ) -> None:
        """Raises unless `image_token_ids` are (batch, N) integer codes, in [0, image_vocab_size) with `values` (the
        one check that reads the device: callers whose codes go on to [`MuseModel.forward`] leave it to it)."""
        n, vocab = self.config.num_image_tokens, self.config.image_vocab_size
        if (
            not isinstance(image_token_ids, torch.Tensor)
            or image_token_ids.is_floating_point()
            or image_token_ids.ndim != 2
            or image_token_ids.shape[1] != n
        ):
            found = tuple(image_token_ids.shape) if isinstance(image_token_ids, torch.Tensor) else image_token_ids
            raise ValueError(
                f"`{name}` must be integer codes of shape (batch, {n}) in raster order, got {found}. Use "
                "`encode_images(pixel_values)`."
            )
        if values and outside_range(image_token_ids, vocab):
            raise ValueError(
                f"`{name}` must be codes in [0, {vocab}), got values in [{int(image_token_ids.min())}, "
                f"{int(image_token_ids.max())}]. Mark unknown positions with `mask`, not with the [MASK] id."
            )

    def check_mask(self, mask: torch.Tensor, image_token_ids: torch.Tensor) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != image_token_ids.shape:
            found = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else repr(mask)
            raise ValueError(
                f"`mask` must be a bool tensor shaped like `image_token_ids` {tuple(image_token_ids.shape)}, got {found}."
            )

    def input_embeddings(self, image_token_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) codes -> (B, N, C) inputs: the code embeddings, [MASK]'s where `mask` (B, N) is True, plus the
        position embeddings. A masked position's code is never read."""
        ids = image_token_ids
        if mask is not None:
            ids = ids.masked_fill(mask, self.config.mask_token_id)  # (B, N)
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token_embeddings(ids) + self.position_embeddings(positions)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        """The text encoder's outputs; `kwargs`: its `output_attentions` / `output_hidden_states`."""
        return self.text_encoder(input_ids, attention_mask, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_token_ids: torch.LongTensor | None = None,
        mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuseModelOutput | tuple:
        """
        Args:
            input_ids, attention_mask: (B, S) caption ids and padding mask (`input_ids` not needed with
                `encoder_outputs`; the mask is still the cross-attention's key padding mask).
            image_token_ids: (B, N) codes in raster order.
            mask: (B, N) bool, True = replaced by [MASK]. Default: none masked.
            encoder_outputs: precomputed text states (B, S, C) (the sampling loop encodes once).
            inputs_embeds: (B, N, C) backbone inputs with positions, instead of `image_token_ids` and `mask`.
            output_attentions: return the attention weights of the text encoder and of the backbone's self- and
                cross-attention (needs `attn_implementation="eager"`).
            output_hidden_states: return the hidden states of the text encoder and of the backbone.

        Returns:
            [`MuseModelOutput`] with `last_hidden_state` (B, N, C).
        """
        config = self.config
        output_attentions, output_hidden_states, return_dict = output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        if inputs_embeds is None:
            if image_token_ids is None:
                raise ValueError("Pass `image_token_ids` (the image codes, `encode_images(pixel_values)`).")
            self.check_image_token_ids(image_token_ids)
            if mask is not None:
                self.check_mask(mask, image_token_ids)
            inputs_embeds = self.input_embeddings(image_token_ids, mask)
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError(
                    "Pass `input_ids` (the caption, from the processor) or precomputed `encoder_outputs`."
                )
            encoder_outputs = self.encode_text(
                input_ids,
                attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        text = encoder_outputs.last_hidden_state  # (B, S, C)
        if text.shape[0] != inputs_embeds.shape[0]:
            raise ValueError(
                f"The captions ({text.shape[0]} rows) and `image_token_ids` ({inputs_embeds.shape[0]} rows) must have "
                "the same batch size."
            )
        stack = run_blocks(
            self.layers,
            inputs_embeds,
            None,  # bidirectional: no self-attention mask
            encoder_hidden_states=text,
            encoder_attention_mask=padding_mask(attention_mask, inputs_embeds.dtype),  # (B, 1, 1, S) or None
            norm=self.norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        out = MuseModelOutput(
            last_hidden_state=stack.last_hidden_state,
            encoder_last_hidden_state=text,
            hidden_states=stack.hidden_states,
            attentions=stack.attentions,
            cross_attentions=stack.cross_attentions,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return out if return_dict else out.to_tuple()


class MuseUViTModel(MuseModel):
    """aMUSEd's U-ViT (`MuseConfig(backbone="uvit")`, see `modeling_muse_uvit`): a CLIP text encoder with projection
    + the U-ViT over the code grid; returns the up stage's output (B, N, C) at the N image positions, which the head of
    [`MuseForConditionalGeneration`] turns into code logits."""

    def __init__(self, config: MuseConfig):
        MusePreTrainedModel.__init__(self, config)
        self.text_encoder = CLIPTextConditioning(config)
        self.token_embeddings = nn.Embedding(config.image_vocab_size + 1, config.embedding_size)  # codes, [MASK]
        self.backbone = UViTBackbone(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_encoder(self) -> CLIPTextConditioning:
        return self.text_encoder

    def input_embeddings(self, image_token_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) codes -> (B, N, C) inputs of the U-ViT ([MASK]'s where `mask` is True); no position embeddings: the
        convolutions see the grid."""
        ids = image_token_ids if mask is None else image_token_ids.masked_fill(mask, self.config.mask_token_id)
        return self.backbone.embed(self.token_embeddings(ids))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """The CLIP encoder's penultimate states (`last_hidden_state`) and projected pooled output (`pooler_output`);
        the padding is read as aMUSEd reads it, so `attention_mask` is not used."""
        return self.text_encoder(input_ids, **kwargs)

    def default_micro_conditioning(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B, 5) the micro-conditions of the config: the image size as width and height, the crop, the score."""
        c = self.config
        values = [c.image_size, c.image_size, *c.micro_conditioning_crop_coord, c.micro_conditioning_aesthetic_score]
        return torch.tensor(values, dtype=torch.float32, device=device).expand(batch, -1)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_token_ids: torch.LongTensor | None = None,
        mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutputWithPooling | tuple | None = None,
        inputs_embeds: torch.Tensor | None = None,
        micro_conditioning: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuseModelOutput | tuple:
        """
        Args:
            input_ids: (B, S) caption ids (not needed with `encoder_outputs`); `attention_mask` is not used.
            image_token_ids, mask, inputs_embeds: as in [`MuseModel.forward`].
            encoder_outputs: precomputed text states: `last_hidden_state` (B, S, D) and `pooler_output` (B, P), or the
                tuple `(last_hidden_state, pooler_output)`.
            micro_conditioning: (B, 5) width, height, crop top, crop left, aesthetic score (default: the config's,
                `default_micro_conditioning`).
            output_hidden_states: return the text encoder's hidden states and the transformer blocks' input and
                outputs.
            output_attentions: not supported by this backbone.

        Returns:
            [`MuseModelOutput`] with `last_hidden_state` (B, N, C).
        """
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if output_attentions:
            raise ValueError("`output_attentions` is not supported by the U-ViT backbone (`backbone='uvit'`).")
        if inputs_embeds is None:
            if image_token_ids is None:
                raise ValueError("Pass `image_token_ids` (the image codes, `encode_images(pixel_values)`).")
            self.check_image_token_ids(image_token_ids)
            if mask is not None:
                self.check_mask(mask, image_token_ids)
            inputs_embeds = self.input_embeddings(image_token_ids, mask)
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError(
                    "Pass `input_ids` (the caption, from the processor) or precomputed `encoder_outputs`."
                )
            encoder_outputs = self.encode_text(input_ids, output_hidden_states=output_hidden_states)
        elif isinstance(encoder_outputs, (tuple, list)):
            if len(encoder_outputs) < 2:
                raise ValueError(
                    "`encoder_outputs` of the U-ViT backbone must hold the text states and the pooled text "
                    "(`last_hidden_state`, `pooler_output`)."
                )
            encoder_outputs = BaseModelOutputWithPooling(
                last_hidden_state=encoder_outputs[0], pooler_output=encoder_outputs[1]
            )
        text, pooled = encoder_outputs.last_hidden_state, getattr(encoder_outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError("The U-ViT backbone needs the pooled text (`encoder_outputs.pooler_output`) too.")
        batch = inputs_embeds.shape[0]
        if text.shape[0] != batch or pooled.shape[0] != batch:
            raise ValueError(
                f"The captions ({text.shape[0]} rows) and `image_token_ids` ({batch} rows) must have the same batch "
                "size."
            )
        if micro_conditioning is None:
            micro_conditioning = self.default_micro_conditioning(batch, inputs_embeds.device)
        elif not isinstance(micro_conditioning, torch.Tensor) or micro_conditioning.shape != (batch, 5):
            found = (
                tuple(micro_conditioning.shape) if isinstance(micro_conditioning, torch.Tensor) else micro_conditioning
            )
            raise ValueError(
                f"`micro_conditioning` must be ({batch}, 5): width, height, crop top, crop left, aesthetic score; got "
                f"{found}."
            )
        hidden, hidden_states = self.backbone(
            inputs_embeds, text, pooled, micro_conditioning, output_hidden_states=output_hidden_states
        )
        out = MuseModelOutput(
            last_hidden_state=hidden,
            encoder_last_hidden_state=text,
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_outputs.hidden_states,
        )
        return out if return_dict else out.to_tuple()


class MuseForConditionalGeneration(MuseGenerationMixin, MusePreTrainedModel):
    """Muse with its LM head over the codebook and its VQ tokenizer (`vqmodel`: `DalleDVAE` or `ViTVQGAN`).

    Example:

    ```python
    >>> model = MuseForConditionalGeneration.from_pretrained(path)
    >>> inputs = MuseProcessor.from_pretrained(path)(text=["a red circle"])
    >>> ids = model.sample_image_tokens(**inputs, generator=torch.Generator().manual_seed(0))  # (1, N)
    >>> pixels = model.decode_image_tokens(ids)  # (1, 3, H, W) in [-1, 1]
    ```
    """

    def __init__(self, config: MuseConfig):
        super().__init__(config)
        if config.backbone == "uvit":
            self.model = MuseUViTModel(config)
            self.lm_head = UViTHead(config)  # never predicts [MASK]
        else:
            self.model = MuseModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.image_vocab_size)  # never predicts [MASK]
        self.vqmodel = build_image_tokenizer(config.vq_config)
        self.post_init()

    def get_encoder(self) -> TextEncoder | CLIPTextConditioning:
        return self.model.text_encoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.projection if isinstance(self.lm_head, UViTHead) else self.lm_head

    def load_text_encoder(self, path: str) -> None:
        """Load pretrained weights into the (frozen) text encoder, e.g. all-MiniLM-L6-v2 from `minilm_path()`."""
        self.model.text_encoder.load_pretrained(path)

    # -- image tokens <-> pixels -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, 3, S, S) pixels in [-1, 1] -> (B, N) codes in raster order."""
        size = self.config.image_size
        if (
            not isinstance(pixel_values, torch.Tensor)
            or pixel_values.ndim != 4
            or pixel_values.shape[-2:] != (size, size)
        ):
            found = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else pixel_values
            raise ValueError(f"`pixel_values` must be (batch, 3, {size}, {size}), got {found}.")
        vq_config = self.config.vq_config
        if not isinstance(vq_config, DiffusersVQConfig):
            return self.vqmodel.encode(pixel_values)
        low, high = vq_config.output_range
        pixels = (pixel_values + 1) / 2 * (high - low) + low  # [-1, 1] -> the VQModel's range
        latents = self.vqmodel.encode(pixels).latents  # (B, D, g, g)
        indices = self.vqmodel.quantize(latents)[2][2]  # (B * g * g,) nearest codes, raster order
        return indices.view(pixel_values.shape[0], -1)

    @torch.no_grad()
    def decode_image_tokens(self, image_token_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) codes -> (B, 3, S, S) pixels in [-1, 1] (float32)."""
        self.model.check_image_token_ids(image_token_ids)
        vq_config = self.config.vq_config
        if not isinstance(vq_config, DiffusersVQConfig):
            return self.vqmodel.decode(image_token_ids).float()
        grid = vq_config.grid_size
        shape = (image_token_ids.shape[0], grid, grid, self.vqmodel.quantize.embedding.weight.shape[1])
        if self.vqmodel.config.lookup_from_codebook:  # aMUSEd's: the VQModel looks the codes up itself
            pixels = self.vqmodel.decode(image_token_ids, force_not_quantize=True, shape=shape).sample
        else:
            quant = self.vqmodel.quantize.get_codebook_entry(image_token_ids, shape)  # (B, D, g, g)
            pixels = self.vqmodel.decode(quant, force_not_quantize=True).sample
        low, high = vq_config.output_range
        return (pixels.float().clamp(low, high) - low) / (high - low) * 2 - 1

    # -- training --------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_token_ids: torch.LongTensor | None = None,
        mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        generator: torch.Generator | None = None,
        return_loss: bool = True,
        micro_conditioning: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuseOutput | tuple:
        """
        Args:
            input_ids, attention_mask: (B, S) captions (from the processor) and their padding mask.
            image_token_ids: (B, N) codes in raster order (`encode_images`); the targets at the masked positions.
            mask: (B, N) bool, True = replaced by [MASK] and predicted. Default with `return_loss`: drawn from the
                cosine schedule with `generator` (`cosine_training_mask`); without: none masked.
            encoder_outputs: precomputed text states instead of `input_ids`.
            generator: the source of the training mask (the training loop's generator: exact resume).
            return_loss: compute the cross-entropy over the masked positions.
            micro_conditioning: (B, 5) the U-ViT backbone's micro-conditions (default: the config's); only with
                `backbone="uvit"`.
            output_attentions, output_hidden_states: as in [`MuseModel.forward`].

        Returns:
            [`MuseOutput`]: `loss` (with `return_loss`), `logits` (B, N, V), `mask` (as a float tensor).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if image_token_ids is None:
            raise ValueError("Pass `image_token_ids` (the image codes, `encode_images(pixel_values)`).")
        self.model.check_image_token_ids(image_token_ids, values=False)  # the model's forward checks the values
        if mask is None and return_loss:
            batch, length = image_token_ids.shape
            mask = cosine_training_mask(batch, length, generator, image_token_ids.device)
        if micro_conditioning is not None and self.config.backbone != "uvit":
            raise ValueError("`micro_conditioning` is read by the U-ViT backbone only (`backbone='uvit'`).")
        extra = {"micro_conditioning": micro_conditioning} if micro_conditioning is not None else {}
        outputs = self.model(
            input_ids,
            attention_mask,
            image_token_ids=image_token_ids,
            mask=mask,
            encoder_outputs=encoder_outputs,
            **extra,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)  # (B, N, V)
        loss = None
        if return_loss:
            where = true_positions(mask)
            if not where.numel():
                raise ValueError("`mask` masks no position: the loss is taken on the masked positions only.")
            # mean over the masked positions
            loss = F.cross_entropy(logits.flatten(0, 1)[where].float(), image_token_ids.flatten()[where])
        out = MuseOutput(
            loss=loss,
            logits=logits,
            mask=None if mask is None else mask.to(logits.dtype),
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return out if return_dict else out.to_tuple()


__all__ = [
    "MuseForConditionalGeneration",
    "MuseModel",
    "MuseUViTModel",
    "MuseModelOutput",
    "MuseOutput",
    "MusePreTrainedModel",
]
